"""The U-Net's fused conv and residual block: torch reference + dispatch to the Triton kernel.

    conv3x3_circular(x, w, b, pre_gelu, shifts, residual, extra_input)
        = post(conv2d(pad_circular(pre(cat([x, extra_input], 1)), 1), w, b)) + residual
          pre = GELU if pre_gelu else identity;  post: h ← GELU(h + s) for each shift s (B, C_out)
    residual_block(block, x, skip, embeddings)
        = post2(conv2(GELU(post1(conv1(GELU(u)))))) + shortcut(u),  u = cat([x, skip], 1)
          post1/post2: h ← GELU(h + shift1[j](e_j)) / GELU(h + shift2[j](e_j)) per embedding e_j

with the exact (erf) GELU, the 3×3 weight (C_out, C_in, 3, 3) as torch stores it, and the
shortcut a 1×1 conv (stride 1) or the identity: the authors' pre-activation `Residual_block`
(docs/method.md §Network). The torch path is plain nn.Conv2d arithmetic (padding_mode="circular"
is F.pad + F.conv2d).

Layout: NCHW at the API for every backend. The Triton path works channels-last: it views its
inputs as NHWC (free for a tensor already in torch.channels_last memory format, one copy
otherwise) and returns an NCHW-shaped tensor in channels_last memory format, so a chain of fused
convs converts once, at its entry. Under torch.autocast the Triton path computes in the autocast
dtype, as cuDNN would. The kernel has no backward: the Triton path is for inference (no_grad /
inference_mode) and refuses inputs that need gradients; training runs the torch path.

Backends: "torch", "triton", "auto" (Triton on CUDA, torch elsewhere; see ops.dispatch). This op
has no CUDA C++ kernel: "cuda" is refused, and "auto" picks Triton even where the extension is built.
A network that runs all its fused ops under one backend name asks `block_backend` for its convs'
("cuda" runs Triton there). The Triton module is imported only when the Triton path runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from sns_engine.kernels import MAX_SHIFTS, KernelInputError
from sns_engine.ops.dispatch import BackendError, implementation, resolve_backend

CONV_BACKENDS = ("auto", "torch", "triton")


class ConvWeights(Protocol):
    weight: torch.Tensor
    bias: torch.Tensor | None


class ResidualWeights(Protocol):
    """What `residual_block` reads (an nn.Module `ResidualBlock` has it): two 3×3 convs, a
    shortcut that is a 1×1 conv (has `weight`, `bias`) or anything without `weight` (identity),
    and per conv one linear map (embedding → C_out) per level embedding."""

    conv1: ConvWeights
    conv2: ConvWeights
    shortcut: Any
    shift1: Sequence[Callable[[torch.Tensor], torch.Tensor]]
    shift2: Sequence[Callable[[torch.Tensor], torch.Tensor]]


def check_conv_backend(name: str | None) -> None:
    """Raise BackendError unless `name` is a backend this op has (None means "auto")."""
    if name is not None and name not in CONV_BACKENDS:
        raise BackendError(f"conv_block backend {name!r} is not available; choose one of "
                           f"{CONV_BACKENDS} (this op has no CUDA C++ kernel)")


def conv_backend(name: str | None, device: str | torch.device) -> str:
    """"torch" or "triton": the implementation `name` selects on `device`."""
    check_conv_backend(name)
    return block_backend(name, device)


def block_backend(name: str | None, device: str | torch.device) -> str:
    """"torch" or "triton": the conv implementation of a network whose fused ops run under `name`,
    any name of ops.dispatch (checked there). "cuda" runs the Triton kernel: this op has no CUDA
    C++ kernel, and Triton is what "auto" picks where the extension is built."""
    return "torch" if resolve_backend(name, device) == "torch" else "triton"


def _check(x, weight, bias, shifts, residual, extra_input) -> None:
    op = "conv3x3_circular"
    if x.ndim != 4:
        raise KernelInputError(f"{op}: x has shape {tuple(x.shape)}, expected (B, C, H, W)")
    batch, c_in, height, width = x.shape
    if extra_input is not None:
        if extra_input.ndim != 4 or (extra_input.shape[0], *extra_input.shape[2:]) \
                != (batch, height, width):
            raise KernelInputError(f"{op}: extra_input has shape {tuple(extra_input.shape)}, "
                                   f"expected ({batch}, *, {height}, {width}) like x")
        c_in += extra_input.shape[1]
    if weight.ndim != 4 or weight.shape[1:] != (c_in, 3, 3):
        raise KernelInputError(f"{op}: weight has shape {tuple(weight.shape)}, expected "
                               f"(C_out, {c_in}, 3, 3) for {c_in} input channels")
    c_out = weight.shape[0]
    if bias is not None and bias.shape != (c_out,):
        raise KernelInputError(f"{op}: bias has shape {tuple(bias.shape)}, expected ({c_out},)")
    if len(shifts) > MAX_SHIFTS:
        raise KernelInputError(f"{op}: at most {MAX_SHIFTS} shifts (one per level head), got "
                               f"{len(shifts)}")
    for shift in shifts:
        if shift.shape != (batch, c_out):
            raise KernelInputError(f"{op}: a shift has shape {tuple(shift.shape)}, expected "
                                   f"({batch}, {c_out})")
    if residual is not None and residual.shape != (batch, c_out, height, width):
        raise KernelInputError(f"{op}: residual has shape {tuple(residual.shape)}, expected "
                               f"{(batch, c_out, height, width)}")


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      pre_gelu: bool = False, shifts: Sequence[torch.Tensor] = (),
                      residual: torch.Tensor | None = None,
                      extra_input: torch.Tensor | None = None) -> torch.Tensor:
    """The op in plain torch, in the inputs' dtype (float64 inputs make the tests' oracle)."""
    inp = x if extra_input is None else torch.cat([x, extra_input], dim=1)
    if pre_gelu:
        inp = F.gelu(inp)
    out = F.conv2d(F.pad(inp, (1, 1, 1, 1), mode="circular"), weight, bias)
    for shift in shifts:
        out = F.gelu(out + shift[:, :, None, None])
    return out if residual is None else out + residual


def _nhwc(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """(B, C, H, W) → a contiguous (B, H, W, C) (a view when t is channels_last)."""
    return None if t is None else t.to(dtype or t.dtype).permute(0, 2, 3, 1).contiguous()


def conv3x3_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   pre_gelu: bool = False, shifts: Sequence[torch.Tensor] = (),
                   residual: torch.Tensor | None = None,
                   extra_input: torch.Tensor | None = None) -> torch.Tensor:
    """The op through the Triton kernel (NCHW in, channels_last NCHW out; module docstring)."""
    from sns_engine.kernels import conv_block as kernel  # imports triton: only when this runs

    inputs = (x, weight, bias, residual, extra_input, *shifts)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        raise BackendError("conv3x3_circular: the Triton kernel has no backward; run it under "
                           "torch.no_grad() or torch.inference_mode(), or train with backend='torch'")
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out = kernel.conv3x3_circular_nhwc(
        _nhwc(x, dtype), weight.to(dtype).permute(2, 3, 1, 0).contiguous(), bias, pre_gelu,
        tuple(s.contiguous() for s in shifts), _nhwc(residual), _nhwc(extra_input, dtype))
    return out.permute(0, 3, 1, 2)


def conv3x3_circular(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     pre_gelu: bool = False, shifts: Sequence[torch.Tensor] = (),
                     residual: torch.Tensor | None = None, extra_input: torch.Tensor | None = None,
                     backend: str | None = "auto") -> torch.Tensor:
    """post(circular 3×3 conv of pre(cat([x, extra_input], 1)) + bias) + residual, NCHW in and out.

    x (B, C1, H, W), extra_input (B, C2, H, W) or None, weight (C_out, C1 + C2, 3, 3), bias
    (C_out,) or None; `pre_gelu` applies GELU to the input; each of the ≤ 2 `shifts` (B, C_out)
    is added per sample and channel and followed by a GELU; residual (B, C_out, H, W) or None.
    The Triton path takes float32 or bfloat16 and returns channels_last memory format."""
    _check(x, weight, bias, shifts, residual, extra_input)
    run = implementation("conv3x3_circular", conv_backend(backend, x.device))
    return run(x, weight, bias, pre_gelu, shifts, residual, extra_input)


def _shortcut(shortcut: Any, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """shortcut(cat([x, skip], 1)); a 1×1 conv splits its weight instead of concatenating."""
    weight = getattr(shortcut, "weight", None)
    if weight is None:
        return x if skip is None else torch.cat([x, skip], dim=1)
    if skip is None:
        return F.conv2d(x, weight, shortcut.bias)
    c = x.shape[1]
    return F.conv2d(x, weight[:, :c], shortcut.bias) + F.conv2d(skip, weight[:, c:])


def residual_block(block: ResidualWeights, x: torch.Tensor, skip: torch.Tensor | None = None,
                   embeddings: Sequence[torch.Tensor] = (), backend: str | None = "auto"
                   ) -> torch.Tensor:
    """The authors' pre-activation residual block (module docstring) on u = cat([x, skip], 1).

    Two fused convs; the level embeddings enter each conv's epilogue as per-sample shifts and the
    shortcut (torch) the second one's as its residual. The Triton path never materialises u:
    conv1 reads x and skip as a split input."""
    which = conv_backend(backend, x.device)
    if which == "torch" and skip is not None:
        x, skip = torch.cat([x, skip], dim=1), None
    shifts1 = [shift(e) for shift, e in zip(block.shift1, embeddings, strict=True)]
    shifts2 = [shift(e) for shift, e in zip(block.shift2, embeddings, strict=True)]
    h = conv3x3_circular(x, block.conv1.weight, block.conv1.bias, True, shifts1, extra_input=skip,
                         backend=which)
    return conv3x3_circular(h, block.conv2.weight, block.conv2.bias, True, shifts2,
                            residual=_shortcut(block.shortcut, x, skip), backend=which)
