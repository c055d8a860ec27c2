"""Triton kernels of the fused ops, installed as `sns_engine.kernels`; imports only triton, torch.

One op per module: `rng` (Philox4x32-10 + Box–Muller device functions), `ddpm_update` (the refine
tick and the re-noise), `level_argmax` (argmax of a level head's last linear layer). The plain
torch references and the backend choice live in `sns_engine.ops`. Shared here: input checks.
"""

from __future__ import annotations

import os

import torch


class KernelInputError(ValueError):
    """A kernel was handed a tensor of the wrong shape, dtype, layout or device."""


def check_tensor(op: str, name: str, t: torch.Tensor, shape: tuple[int | None, ...],
                 dtypes: tuple[torch.dtype, ...], device: torch.device | None = None) -> None:
    """Raise KernelInputError unless `t` has `shape` (None = any size), one of `dtypes`, is
    contiguous and (if given) on `device`."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s not in (None, d) for s, d in zip(shape, t.shape, strict=True)):
        want = tuple("*" if s is None else s for s in shape)
        raise KernelInputError(f"{op}: {name} has shape {tuple(t.shape)}, expected {want}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise KernelInputError(f"{op}: {name} has dtype {t.dtype}, expected one of {names}; "
                               f"convert it with .to(...)")
    if not t.is_contiguous():
        raise KernelInputError(f"{op}: {name} is not contiguous; pass {name}.contiguous()")
    if device is not None and t.device != device:
        raise KernelInputError(f"{op}: {name} is on {t.device} but the op runs on {device}; "
                               f"move it with .to({str(device)!r})")


def check_runnable(op: str, t: torch.Tensor) -> None:
    """Raise KernelInputError unless `t` is on a CUDA device or Triton's CPU interpreter is on."""
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise KernelInputError(f"{op}: the Triton kernel needs CUDA tensors, got {t.device}; use "
                               "the torch backend (or TRITON_INTERPRET=1 for the CPU interpreter)")
