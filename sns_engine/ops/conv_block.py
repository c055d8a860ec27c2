"""The U-Net's fused conv and residual block: torch reference + dispatch to the Triton kernel.

    conv3x3_circular(x, w, b, act, residual, extra_input)
        = act(conv2d(pad_circular(cat([x, extra_input], 1), 1), w, b)) + residual
    residual_block(block, x, skip)
        = GELU(conv2(GELU(conv1(cat([x, skip], 1))))) + shortcut(cat([x, skip], 1))

with act None or the exact (erf) GELU, the 3×3 weight (C_out, C_in, 3, 3) as torch stores it,
and the shortcut a 1×1 conv (stride 1) or the identity. The torch path is exactly what the U-Net
computed before this op existed (nn.Conv2d with padding_mode="circular" is F.pad + F.conv2d).

Layout: NCHW at the API for every backend. The Triton path works channels-last: it views its
inputs as NHWC (free for a tensor already in torch.channels_last memory format, one copy
otherwise) and returns an NCHW-shaped tensor in channels_last memory format, so a chain of fused
convs converts once, at its entry. Under torch.autocast the Triton path computes in the autocast
dtype, as cuDNN would. The kernel has no backward: the Triton path is for inference (no_grad /
inference_mode) and refuses inputs that need gradients; training runs the torch path.

Backends: "torch", "triton", "auto" (Triton on CUDA, torch elsewhere; see ops.dispatch). This op
has no CUDA C++ kernel: "cuda" is refused, and "auto" picks Triton even where the extension is built.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from sns_engine.kernels import KernelInputError
from sns_engine.kernels import conv_block as kernel
from sns_engine.ops.dispatch import BackendError, resolve_backend

CONV_BACKENDS = ("auto", "torch", "triton")


class ConvWeights(Protocol):
    weight: torch.Tensor
    bias: torch.Tensor | None


class ResidualWeights(Protocol):
    """What `residual_block` reads (an nn.Module `ResidualBlock` has it): two 3×3 convs and a
    shortcut that is a 1×1 conv (has `weight`, `bias`) or anything without `weight` (identity)."""

    conv1: ConvWeights
    conv2: ConvWeights
    shortcut: Any


def check_conv_backend(name: str | None) -> None:
    """Raise BackendError unless `name` is a backend this op has (None means "auto")."""
    if name is not None and name not in CONV_BACKENDS:
        raise BackendError(f"conv_block backend {name!r} is not available; choose one of "
                           f"{CONV_BACKENDS} (this op has no CUDA C++ kernel)")


def conv_backend(name: str | None, device: str | torch.device) -> str:
    """"torch" or "triton": the implementation `name` selects on `device`."""
    check_conv_backend(name)
    return "torch" if resolve_backend(name, device) == "torch" else "triton"


def _check(x, weight, bias, act, residual, extra_input) -> None:
    op = "conv3x3_circular"
    if act not in kernel.ACTS:
        raise KernelInputError(f"{op}: act must be one of {kernel.ACTS}, got {act!r}")
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
    if residual is not None and residual.shape != (batch, c_out, height, width):
        raise KernelInputError(f"{op}: residual has shape {tuple(residual.shape)}, expected "
                               f"{(batch, c_out, height, width)}")


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      act: str | None = "gelu", residual: torch.Tensor | None = None,
                      extra_input: torch.Tensor | None = None) -> torch.Tensor:
    """The op in plain torch, in the inputs' dtype (float64 inputs make the tests' oracle)."""
    inp = x if extra_input is None else torch.cat([x, extra_input], dim=1)
    out = F.conv2d(F.pad(inp, (1, 1, 1, 1), mode="circular"), weight, bias)
    if act == "gelu":
        out = F.gelu(out)
    return out if residual is None else out + residual


def _nhwc(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """(B, C, H, W) → a contiguous (B, H, W, C) (a view when t is channels_last)."""
    return None if t is None else t.to(dtype or t.dtype).permute(0, 2, 3, 1).contiguous()


def _conv3x3_triton(x, weight, bias, act, residual, extra_input) -> torch.Tensor:
    inputs = (x, weight, bias, residual, extra_input)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        raise BackendError("conv3x3_circular: the Triton kernel has no backward; run it under "
                           "torch.no_grad() or torch.inference_mode(), or train with backend='torch'")
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out = kernel.conv3x3_circular_nhwc(
        _nhwc(x, dtype), weight.to(dtype).permute(2, 3, 1, 0).contiguous(), bias, act,
        _nhwc(residual), _nhwc(extra_input, dtype))
    return out.permute(0, 3, 1, 2)


def conv3x3_circular(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     act: str | None = "gelu", residual: torch.Tensor | None = None,
                     extra_input: torch.Tensor | None = None, backend: str | None = "auto"
                     ) -> torch.Tensor:
    """act(circular 3×3 conv of cat([x, extra_input], 1) + bias) + residual, NCHW in and out.

    x (B, C1, H, W), extra_input (B, C2, H, W) or None, weight (C_out, C1 + C2, 3, 3), bias
    (C_out,) or None, residual (B, C_out, H, W) or None, act "gelu" or None. The Triton path
    takes float32 or bfloat16 and returns channels_last memory format (module docstring)."""
    _check(x, weight, bias, act, residual, extra_input)
    if conv_backend(backend, x.device) == "triton":
        return _conv3x3_triton(x, weight, bias, act, residual, extra_input)
    return conv3x3_reference(x, weight, bias, act, residual, extra_input)


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
                   backend: str | None = "auto") -> torch.Tensor:
    """GELU(conv2(GELU(conv1(u)))) + shortcut(u), u = cat([x, skip], 1) (u = x without skip).

    Two fused convs; the shortcut (torch) enters the second one's epilogue as its residual. The
    Triton path never materialises u: conv1 reads x and skip as a split input."""
    which = conv_backend(backend, x.device)
    if which == "torch" and skip is not None:
        x, skip = torch.cat([x, skip], dim=1), None
    h = conv3x3_circular(x, block.conv1.weight, block.conv1.bias, "gelu", extra_input=skip,
                         backend=which)
    return conv3x3_circular(h, block.conv2.weight, block.conv2.bias, "gelu",
                            residual=_shortcut(block.shortcut, x, skip), backend=which)
