"""The U-Net's CPU fast path (models.unet.UNet takes it on its own): the same arithmetic as the
eager NCHW reference up to float rounding, laid out for oneDNN on a CPU.

A pass takes it on the CPU, in inference (no tensor needs a gradient), with the "torch" conv
backend and float32, unless the network's `fast_cpu` is False (`use_fast_cpu`): channels_last
activations (oneDNN's direct convs, no reorders), the periodic halo written by hand with the
pre-activation GELU's output, GELUs on the contiguous NHWC view, shifts and residuals added in
place, the heads' convs batched, batches in chunks of FAST_CPU_CHUNK members. Outputs are NCHW
either way (`UNet.encode`'s features and skips are channels_last on the fast path).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.ops.conv_block import block_backend


def takes_fast_path(unet: nn.Module, x: torch.Tensor, backend: str | None) -> bool:
    """Whether a pass of the U-Net `unet` on `x` takes the CPU fast path (module docstring)."""
    return (unet.fast_cpu and x.device.type == "cpu" and x.dtype == torch.float32
            and block_backend(backend, x.device) == "torch"
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled()
                     and (x.requires_grad or any(p.requires_grad for p in unet.parameters()))))


def use_fast_cpu(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Let every U-Net in `model` take the CPU fast path (the default), or not (the eager NCHW
    reference, e.g. the authors' loop as published)."""
    for module in model.modules():
        if hasattr(module, "fast_cpu"):
            module.fast_cpu = enabled
    return model


def gelu_nhwc(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """GELU of a channels_last tensor through its contiguous (B, H, W, C) view, which ATen runs
    in its vectorised kernel (a channels_last tensor takes a strided path ≈ 1.6× slower)."""
    view = t.permute(0, 2, 3, 1)
    return (torch.ops.aten.gelu_(view) if inplace else F.gelu(view)).permute(0, 3, 1, 2)


def circular_pad(t: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """GELU(t) (or t) padded periodically by one pixel per side, channels_last: what a circular
    3×3 conv reads. Padded as (B, 1, H, W, C), where F.pad copies whole rows (on NCHW it makes
    narrow strided copies and returns NCHW)."""
    view = (gelu_nhwc(t) if gelu else t).permute(0, 2, 3, 1)[:, None]
    return F.pad(view, (0, 0, 1, 1, 1, 1), mode="circular")[:, 0].permute(0, 3, 1, 2)


def conv(conv: nn.Conv2d, t: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """conv(GELU(t)) (or conv(t)) of a circular conv, on the CPU fast path."""
    return F.conv2d(circular_pad(t, gelu), conv.weight, conv.bias, conv.stride)


def shifted(h: torch.Tensor, shifts: nn.ModuleList, embeddings: tuple[torch.Tensor, ...]
             ) -> torch.Tensor:
    """h ← GELU(h + shift(e)) per level embedding, in place."""
    for shift, e in zip(shifts, embeddings, strict=True):
        gelu_nhwc(h.add_(shift(e)[:, :, None, None]), inplace=True)
    return h


FAST_CPU_CHUNK = 16  # members per fast-path call, as the engine's CPU chunk: activations in cache


def in_chunks(method: Callable) -> Callable:
    """Run a UNet pass of x on the CPU fast path in chunks of FAST_CPU_CHUNK members, the outputs
    (a tensor, or a tuple or list of them) concatenated (the small preset at 64²: 10–20 % faster
    at batch 64 than in one call)."""
    @functools.wraps(method)
    def run(self: nn.Module, x: torch.Tensor, backend: str | None = "torch"):
        self.check_input(x)
        if x.shape[0] <= FAST_CPU_CHUNK or not takes_fast_path(self, x, backend):
            return method(self, x, backend)
        return cat_chunks([method(self, part, backend) for part in x.split(FAST_CPU_CHUNK)])

    return run


def cat_chunks(parts: list) -> object:
    """Concatenate the chunks' outputs along the batch, keeping their structure."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return type(parts[0])(cat_chunks(list(column)) for column in zip(*parts, strict=True))


def stacked(convs: Iterable[nn.Conv2d]) -> tuple[torch.Tensor, torch.Tensor]:
    """The convs' weights and biases concatenated along the output channels."""
    convs = list(convs)
    return torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs])


def block(residual: nn.Module, x: torch.Tensor, skip: torch.Tensor | None,
                embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A `ResidualBlock` (ops.conv_block's arithmetic) on the CPU fast path, shifts in place."""
    u = x if skip is None else torch.cat([x, skip], dim=1)
    h = shifted(conv(residual.conv1, u, gelu=True), residual.shift1, embeddings)
    h = shifted(conv(residual.conv2, h, gelu=True), residual.shift2, embeddings)
    return h.add_(residual.shortcut(u))


def unit(module: nn.Module, h: torch.Tensor, skip: torch.Tensor | None = None,
         embeddings: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """A `Unit` (residual block, then its attention if any) with the block on the fast path."""
    h = block(module.block, h, skip, embeddings)
    return h if module.attention is None else module.attention(h)


def heads_features(heads: nn.ModuleList, h: torch.Tensor) -> list[torch.Tensor]:
    """Each `LevelHead`'s `features(h)`: the heads share GELU(h) and its halo and run their convs
    as one, conv1 stacked, conv2 grouped."""
    mid = F.conv2d(circular_pad(h, gelu=True), *stacked(head.conv1 for head in heads))
    mid = F.conv2d(gelu_nhwc(mid, inplace=True), *stacked(head.conv2 for head in heads),
                   groups=len(heads))
    return [F.gelu(head.fc1(m.flatten(1)))
            for head, m in zip(heads, mid.chunk(len(heads), 1), strict=True)]
