"""The U-Net's CPU fast path (models.unet.UNet takes it on its own): the same arithmetic as the
eager NCHW reference up to float rounding, laid out for oneDNN on a CPU.

A pass takes it on the CPU, in inference (no tensor needs a gradient), with the "torch" conv
backend and float32, unless the network's `fast_cpu` is False (`use_fast_cpu`): channels_last
activations (oneDNN's direct convs, no reorders). Each 3×3 conv reads a padded buffer in this
thread's scratch memory (`padded`: the same memory for every conv, so no allocation, no page
fault, and it is warm in cache): its input copied in once (a block's x and skip side by side, no
cat), the one-pixel periodic border copied from the interior, the pre-activation GELU in place.
Every GELU runs in place on a contiguous NHWC tensor (oneDNN's vectorised erf GELU, no
temporary); shifts and residuals are added in place (a 1×1 shortcut's weight split between x and
skip), the heads' convs batched, batches in chunks of FAST_CPU_CHUNK members. Every conv runs on
weights oneDNN has reordered once into its own layout (`packed`: kept until a weight changes; 14 %
faster at batch 1, bit for bit the same), a GELU that follows a conv directly inside it. Outputs
are NCHW either way (`UNet.encode`'s features and skips are channels_last on the fast path).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.ops.conv_block import block_backend
from sns_engine.ops.row_linear import row_linear


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


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """The (B, H, W, C) view of a (B, C, H, W) tensor (contiguous when t is channels_last)."""
    return t.permute(0, 2, 3, 1)


def gelu_nhwc(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """GELU of a channels_last tensor through its contiguous (B, H, W, C) view, which ATen hands
    to oneDNN's vectorised erf GELU (a strided tensor takes ATen's own loop, ≈ 1.6× slower)."""
    return (torch.ops.aten.gelu_(nhwc(t)) if inplace else F.gelu(nhwc(t))).permute(0, 3, 1, 2)


def halo_pairs(padded: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(destination, source) views of a (B, H + 2, W + 2, C) tensor whose copies, in order,
    fill its one-pixel border periodically from its interior (rows, then whole columns)."""
    return ((padded[:, 0, 1:-1], padded[:, -2, 1:-1]), (padded[:, -1, 1:-1], padded[:, 1, 1:-1]),
            (padded[:, :, 0], padded[:, :, -2]), (padded[:, :, -1], padded[:, :, 1]))


class PadViews(NamedTuple):
    """Views of a contiguous (B, H + 2, W + 2, C) buffer for `fill_padded`."""

    buffer: torch.Tensor
    slices: tuple[torch.Tensor, ...]   # each input's channel slice of the interior
    halo: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def pad_views(buffer: torch.Tensor, channels: tuple[int, ...]) -> PadViews:
    """`buffer`'s views for inputs of `channels` channels side by side."""
    interior, starts = buffer[:, 1:-1, 1:-1], [0, *itertools.accumulate(channels)]
    return PadViews(buffer, tuple(interior[..., a:b] for a, b in itertools.pairwise(starts)),
                    halo_pairs(buffer))


def fill_padded(views: PadViews, parts: tuple[torch.Tensor, ...], gelu: bool) -> torch.Tensor:
    """GELU(u) (or u), u = cat(parts, 1), padded periodically by one pixel per side in
    `views.buffer`, as a channels_last (B, C, H + 2, W + 2) tensor: the parts are copied into
    their slices of the interior, the border from the interior, then the GELU runs in place on
    the whole buffer (contiguous, so vectorised; torch 2.13's `gelu.out` leaves a strided `out`
    such as the interior unwritten on the CPU)."""
    for destination, part in zip(views.slices, parts, strict=True):
        destination.copy_(nhwc(part))
    for destination, source in views.halo:
        destination.copy_(source)
    return (torch.ops.aten.gelu_(views.buffer) if gelu else views.buffer).permute(0, 3, 1, 2)


def circular_pad(t: torch.Tensor, gelu: bool = False, skip: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """GELU(u) (or u), u = cat([t, skip], 1), padded periodically by one pixel per side: what a
    circular 3×3 conv reads, as a channels_last (B, C, H + 2, W + 2) tensor in new memory
    (`padded` writes the same into scratch memory)."""
    parts = (t,) if skip is None else (t, skip)
    channels = tuple(part.shape[1] for part in parts)
    out = t.new_empty(t.shape[0], t.shape[2] + 2, t.shape[3] + 2, sum(channels))
    return fill_padded(pad_views(out, channels), parts, gelu)


class _Scratch(threading.local):
    """This thread's scratch memory (one flat buffer, grown to the largest request yet) and the
    `PadViews` of it used so far (valid until it grows)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.views: dict[tuple[int, ...], PadViews] = {}


_SCRATCH = _Scratch()


def scratch(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """A (B, *shape) tensor of like's dtype, B = like's batch, in this thread's scratch memory:
    the same memory on every call, its contents left over, valid until the next call."""
    size = like.shape[0] * math.prod(shape)
    buffer = _SCRATCH.buffer
    if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype:
        with torch.inference_mode(False):   # a normal tensor: writable in place in any mode
            buffer = _SCRATCH.buffer = like.new_empty(size)
        _SCRATCH.views.clear()
    return buffer[:size].view(like.shape[0], *shape)


def padded(t: torch.Tensor, gelu: bool = False, skip: torch.Tensor | None = None
           ) -> torch.Tensor:
    """`circular_pad(t, gelu, skip)` in this thread's scratch memory (valid until its next use),
    through views kept from call to call (per-call overhead: a few copies, no indexing)."""
    parts = (t,) if skip is None else (t, skip)
    b, _, h, w = t.shape
    key = (b, h, w, *(part.shape[1] for part in parts))
    views = _SCRATCH.views.get(key)
    if views is None:
        buffer = scratch(t, h + 2, w + 2, sum(key[3:]))
        views = _SCRATCH.views[key] = pad_views(buffer, key[3:])
    return fill_padded(views, parts, gelu)


class Packed(NamedTuple):
    """Convs' weights in oneDNN's layout, stacked along the output channels, and their biases."""

    stamp: tuple[tuple[int, int], ...]  # each parameter's (data_ptr, _version) when packed
    weight: torch.Tensor                # an opaque mkldnn tensor
    bias: torch.Tensor


PACKING = torch.backends.mkldnn.is_available()  # else plain F.conv2d (the same arithmetic)
_PACKED: dict[tuple[int, ...], Packed] = {}


def packed(convs: tuple[nn.Conv2d, ...], t: torch.Tensor, groups: int) -> Packed:
    """The convs' `Packed` weights for inputs shaped like `t` (in `groups` groups: a grouped conv
    if 1 < groups), reordered once and kept until a
    weight or bias changes (its memory or its version: an optimizer step, a load) or a conv is
    garbage-collected. Not reordering every call saves 14 % of a batch-1 refiner forward."""
    key = (groups, *map(id, convs))
    params = [p for c in convs for p in (c.weight, c.bias)]
    stamp = tuple((p.data_ptr(), p._version) for p in params)
    entry = _PACKED.get(key)
    if entry is None or entry.stamp != stamp:
        weight, bias = stacked(convs)
        c = convs[0]
        packed_weight = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach(), [0, 0], list(c.stride), [1, 1], groups,
            [FAST_CPU_CHUNK, *t.shape[1:]])
        if key not in _PACKED:
            for c in convs:  # the entry goes with the first conv collected (its id may return)
                weakref.finalize(c, _PACKED.pop, key, None)
        entry = _PACKED[key] = Packed(stamp, packed_weight, bias.detach())
    return entry


def conv2d(convs: nn.Conv2d | tuple[nn.Conv2d, ...], t: torch.Tensor, gelu: bool = False,
           groups: int = 1) -> torch.Tensor:
    """F.conv2d(t, w, b, stride, groups=groups) of t (already padded), GELU(·) of it if `gelu`;
    w, b: the weights and biases of the convs (several of one shape: stacked along the output
    channels). oneDNN on `packed` weights, the GELU fused into the conv (no pass of its own)."""
    convs = convs if isinstance(convs, tuple) else (convs,)
    if not PACKING:
        out = F.conv2d(t, *stacked(convs), convs[0].stride, groups=groups)
        return gelu_nhwc(out, inplace=True) if gelu else out
    entry = packed(convs, t, groups)
    return torch.ops.mkldnn._convolution_pointwise(
        t, entry.weight, entry.bias, [0, 0], list(convs[0].stride), [1, 1], groups,
        "gelu" if gelu else "none", [], "none" if gelu else "")


def _count_packed_convs() -> None:
    """Teach torch's FlopCounterMode the packed conv (2 FLOPs per multiply-add, as F.conv2d); at
    import, since a FlopCounterMode copies the formulas it knows when it is made."""
    from torch.utils.flop_counter import conv_flop_count, flop_registry, register_flop_formula

    op = torch.ops.mkldnn._convolution_pointwise
    if op not in flop_registry:
        register_flop_formula(op)(lambda x_shape, w_shape, *args, out_shape=None, **kwargs:
                                  conv_flop_count(x_shape, w_shape, out_shape))


if PACKING:
    _count_packed_convs()


@functools.cache
def convs_batch_invariant() -> bool:
    """Whether the packed convs on this CPU give a member's outputs the same bits in any batch
    (probed once per process: a random 8 → 16 conv, members alone and in slices of 16; true on
    every AVX-512 CPU measured). The fast path's linears are by construction (ops.row_linear)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    t = torch.randn(16, 8, 10, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        whole = conv2d(conv, t)
        return all(torch.equal(conv2d(conv, t[a:b].contiguous(memory_format=torch.channels_last)),
                               whole[a:b]) for a, b in ((0, 1), (3, 5), (2, 9)))


def conv(conv: nn.Conv2d, t: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """conv(GELU(t)) (or conv(t)) of a circular conv, on the CPU fast path."""
    return conv2d(conv, padded(t, gelu))


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x), row by row: a member's result does not depend on the batch (ops.row_linear)."""
    return row_linear(x, layer.weight, layer.bias)


def embedding(embed: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """A `LevelEmbedding` of a head's logits with its linears row by row (`linear`)."""
    return F.gelu(linear(embed.fc2, F.gelu(linear(embed.fc1, logits.softmax(dim=-1)))))


def shifted(h: torch.Tensor, shifts: nn.ModuleList, embeddings: tuple[torch.Tensor, ...]
             ) -> torch.Tensor:
    """h ← GELU(h + shift(e)) per level embedding, in place."""
    for shift, e in zip(shifts, embeddings, strict=True):
        gelu_nhwc(h.add_(linear(shift, e)[:, :, None, None]), inplace=True)
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


def pixels(t: torch.Tensor) -> torch.Tensor:
    """The (B·H·W, C) matrix of a channels_last (B, C, H, W) tensor: a view, else a copy."""
    return nhwc(t).reshape(-1, t.shape[1])


def add_shortcut(h: torch.Tensor, shortcut: nn.Module, x: torch.Tensor,
                 skip: torch.Tensor | None) -> torch.Tensor:
    """h + shortcut(cat([x, skip], 1)) in place: a 1×1 conv is a GEMM over the pixels,
    accumulated into h (addmm into h: no output tensor, no add pass; torch's conv would take its slow
    NCHW path below 16 members on one thread), its weight split between x and skip (no cat); the
    identity is added."""
    weight = getattr(shortcut, "weight", None)
    if weight is None:
        return h.add_(x if skip is None else torch.cat([x, skip], dim=1))
    out, weight, c = pixels(h), weight.flatten(1), x.shape[1]
    if out.data_ptr() != h.data_ptr() or not out.is_contiguous():
        raise ValueError("add_shortcut accumulates into a channels_last h")
    torch.addmm(out, pixels(x), weight[:, :c].t(), out=out)  # (FLOP counters see `addmm`)
    if skip is not None:
        torch.addmm(out, pixels(skip), weight[:, c:].t(), out=out)
    out.add_(shortcut.bias)
    return h


def block(residual: nn.Module, x: torch.Tensor, skip: torch.Tensor | None,
          embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A `ResidualBlock` (ops.conv_block's arithmetic) on the CPU fast path: conv1 reads GELU(x)
    and GELU(skip) side by side in the padded buffer, conv2 the GELU of conv1's output taken in
    place, shifts and the shortcut added in place."""
    if embeddings:
        h = shifted(conv2d(residual.conv1, padded(x, True, skip)), residual.shift1, embeddings)
        h = gelu_nhwc(h, inplace=True)
    else:
        h = conv2d(residual.conv1, padded(x, True, skip), gelu=True)
    h = shifted(conv(residual.conv2, h), residual.shift2, embeddings)
    return add_shortcut(h, residual.shortcut, x, skip)


def unit(module: nn.Module, h: torch.Tensor, skip: torch.Tensor | None = None,
         embeddings: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """A `Unit` (residual block, then its attention if any) with the block on the fast path."""
    h = block(module.block, h, skip, embeddings)
    return h if module.attention is None else module.attention(h)


def heads_features(heads: nn.ModuleList, h: torch.Tensor) -> list[torch.Tensor]:
    """Each `LevelHead`'s `features(h)`: the heads share GELU(h) and its halo and run their convs
    as one, conv1 stacked, conv2 grouped."""
    mid = conv2d(tuple(head.conv1 for head in heads), padded(h, gelu=True), gelu=True)
    mid = conv2d(tuple(head.conv2 for head in heads), mid, groups=len(heads))
    return [F.gelu(linear(head.fc1, m.flatten(1)))
            for head, m in zip(heads, mid.chunk(len(heads), 1), strict=True)]
