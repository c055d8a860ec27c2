"""Triton kernels of the fused ops, installed as `sns_engine.kernels` (imports only triton and torch,
never sns_engine).

One op per module: `rng` (Philox4x32-10 + Box–Muller device functions), `ddpm_update` (the refine
tick and the re-noise), `level_argmax` (argmax of a level head's last linear layer), `conv_block`
(the fused circular 3×3 conv). Those modules import triton; this one imports only torch, so the
input checks below, shared by every backend of an op, load without Triton (`sns_engine.ops` calls
them before it dispatches; the kernels' public functions call them too). The plain torch
references and the backend choice live in `sns_engine.ops`.
"""

from __future__ import annotations

import os

import torch

MAX_SHIFTS = 2  # per-sample shifts a fused conv takes in its epilogue (one per level head)


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


def check_tick(op: str, x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, coefs) -> None:
    """Shapes, dtypes, contiguity and device of the refine tick's inputs (KernelInputError
    otherwise); the arguments of `sns_engine.ops.update.ddpm_tick`."""
    shape, dev = tuple(x.shape) if x.ndim == 4 else (None,) * 4, x.device
    b = shape[0]
    check_tensor(op, "x", x, shape, (torch.float32,), dev)
    check_tensor(op, "y", y, shape, (torch.float32,), dev)
    for name, eps in (("eps_x", eps_x), ("eps_y", eps_y)):
        check_tensor(op, name, eps, shape, (torch.float32, torch.bfloat16), dev)
    for name, t, size in (("n_x", n_x, (b,)), ("n_y", n_y, (b,)), ("moves", moves, (b, 2)),
                          ("counts", counts, (b, 2)), ("step", step, (b,))):
        check_tensor(op, name, t, size, (torch.int32,), dev)
    check_tensor(op, "member", member, (b,), (torch.int64,), dev)
    check_tensor(op, "coefs", coefs, (3, None), (torch.float32,), dev)


def check_renoise(op: str, frame, level, member, step, sqrt_ab, sqrt_1mab) -> None:
    """Shapes, dtypes, contiguity and device of the re-noise inputs (KernelInputError otherwise)."""
    shape, dev = tuple(frame.shape) if frame.ndim == 4 else (None,) * 4, frame.device
    b = shape[0]
    check_tensor(op, "frame", frame, shape, (torch.float32,), dev)
    check_tensor(op, "level", level, (b,), (torch.int32,), dev)
    check_tensor(op, "member", member, (b,), (torch.int64,), dev)
    check_tensor(op, "step", step, (b,), (torch.int32,), dev)
    check_tensor(op, "sqrt_ab", sqrt_ab, (None,), (torch.float32,), dev)
    check_tensor(op, "sqrt_1mab", sqrt_1mab, (sqrt_ab.shape[0],), (torch.float32,), dev)


LEVEL_ARGMAX_DTYPES = (torch.float32, torch.bfloat16)


def check_level_argmax(op: str, features, weight, bias) -> None:
    """Shapes, dtypes, contiguity and device of the level argmax's inputs (KernelInputError
    otherwise)."""
    rows, width = tuple(features.shape) if features.ndim == 2 else (None, None)
    dev = features.device
    check_tensor(op, "features", features, (rows, width), LEVEL_ARGMAX_DTYPES, dev)
    check_tensor(op, "weight", weight, (None, width), LEVEL_ARGMAX_DTYPES, dev)
    check_tensor(op, "bias", bias, (weight.shape[0],), (weight.dtype,), dev)
    if weight.shape[0] == 0:
        raise KernelInputError(f"{op}: weight has no rows (K = 0); a level head needs ≥ 1 class")
