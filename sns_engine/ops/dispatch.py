"""Which implementation of a fused op runs: "torch" (reference, any device), "triton", "cuda".

    auto / None  →  "cuda"   on a CUDA device when the prebuilt extension imports
                    "triton" on a CUDA device otherwise
                    "torch"  elsewhere (the CPU path)

An explicit name is checked against the device: "triton" needs a CUDA device or the Triton
interpreter (TRITON_INTERPRET=1, what the tests use on CPU); "cuda" needs a CUDA device and an
extension that is built or can be JIT-compiled (`cuda_ext.load` says why not).
"""

from __future__ import annotations

import os

import torch

from sns_engine.ops import cuda_ext

BACKENDS = ("torch", "triton", "cuda")


class BackendError(ValueError):
    """An unknown backend name, or one that cannot run on the given device."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends(device: str | torch.device | None = None) -> tuple[str, ...]:
    """Backends `resolve_backend` accepts by name on `device` (default: cuda if present)."""
    device = torch.device(device if device is not None else
                          "cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    names = ["torch"]
    if on_cuda or _interpreting():
        names.append("triton")
    if on_cuda and cuda_ext.unavailable_reason() is None:
        names.append("cuda")
    return tuple(names)


def resolve_backend(name: str | None, device: str | torch.device) -> str:
    """The backend to run on `device` for the requested `name` ("auto", None or one of BACKENDS)."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if name in (None, "auto"):
        if not on_cuda:
            return "torch"
        return "cuda" if cuda_ext.is_built() else "triton"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose 'auto' or one of {BACKENDS}")
    if name == "triton" and not (on_cuda or _interpreting()):
        raise BackendError(f"backend 'triton' needs a CUDA device, got {device}; use "
                           "backend='torch' (or TRITON_INTERPRET=1 for Triton's CPU interpreter)")
    if name == "cuda":
        if not on_cuda:
            raise BackendError(f"backend 'cuda' needs a CUDA device, got {device}; "
                               "use backend='torch' on CPU")
        cuda_ext.load()  # raises CudaExtensionError with the reason when it cannot be had
    return name
