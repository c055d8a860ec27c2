"""Which implementation of a fused op runs: "torch" (reference, any device), "triton", "cuda".

    auto / None  →  "cuda"   on a CUDA device when the prebuilt extension imports
                    "triton" on a CUDA device otherwise
                    "torch"  elsewhere (the CPU path)

An explicit name is checked against the device: "triton" needs a CUDA device or the Triton
interpreter (TRITON_INTERPRET=1, what the tests use on CPU); "cuda" needs a CUDA device and an
extension that is built or can be JIT-compiled (`cuda_ext.load` says why not).

`IMPLEMENTATIONS` is the one table of what runs: (op, backend) → the function, named as
"module:function" and imported on first use, so a Triton module (which imports triton) loads only
when its backend runs. All implementations of an op take the same arguments, already checked by
the op (the checks in `sns_engine.kernels`, which import only torch), and return the same thing.
An op resolves the backend name with `resolve_backend` and calls `implementation(op, backend)`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

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


IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("ddpm_tick", "torch"): "sns_engine.ops.update:tick_reference",
    ("ddpm_tick", "triton"): "sns_engine.kernels.ddpm_update:launch_tick",
    ("ddpm_tick", "cuda"): "sns_engine.ops.cuda_ext:ddpm_tick",
    ("renoise", "torch"): "sns_engine.ops.update:renoise_reference",
    ("renoise", "triton"): "sns_engine.kernels.ddpm_update:launch_renoise",
    ("renoise", "cuda"): "sns_engine.ops.cuda_ext:renoise",
    ("level_argmax", "torch"): "sns_engine.ops.level_argmax:level_argmax_reference",
    ("level_argmax", "triton"): "sns_engine.kernels.level_argmax:launch_level_argmax",
    ("level_argmax", "cuda"): "sns_engine.ops.cuda_ext:level_argmax",
    # NCHW in and out; the Triton entry is ops.conv_block's channels-last wrapper of the kernel
    ("conv3x3_circular", "torch"): "sns_engine.ops.conv_block:conv3x3_reference",
    ("conv3x3_circular", "triton"): "sns_engine.ops.conv_block:conv3x3_triton",
}


def op_backends(op: str) -> tuple[str, ...]:
    """The backends `op` has an implementation for, in table order."""
    return tuple(backend for name, backend in IMPLEMENTATIONS if name == op)


@functools.cache
def implementation(op: str, backend: str) -> Callable:
    """The function that runs `op` on `backend` (a name `resolve_backend` returned), imported on
    first use."""
    target = IMPLEMENTATIONS.get((op, backend))
    if target is None:
        raise BackendError(f"{op} has no {backend!r} implementation; it has {op_backends(op)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
