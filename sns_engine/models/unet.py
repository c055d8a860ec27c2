"""The U-Net backbone shared by emulator, refiner and Thermalizer, with level heads.

It follows the authors' `ModernUnet` family (docs/method.md §Network; no normalisation anywhere,
GELU, circular padding):

    input proj 3×3 ─► level 0 ─► down ─► level 1 ─► … ─► level L−1 ─► middle ─► level heads
          │              │                  │                 │          │          │ softmax
    out 3×3 ◄─ level 0 ◄─ up ◄── level 1 ◄── … ◄── level L−1 ◄──────┘    MLP → level embeddings
                  ▲                  ▲                 ▲                          │
                  └──────────────────┴─────────────────┴──────────────────────────┘ (refiner)

- The input projection has `hidden` channels; level i has hidden·Π_{j≤i} channel_mults[j]
  channels and grid/2^i pixels per side (the paper preset: 64 → 128·256·512 on 64², 32², 16²).
- Every encoder unit (projection, residual block, downsampling) pushes its output on a skip
  stack. The decoder has, per level, `blocks_per_level` blocks at the level's width, then one
  block down to the next finer width (the projection's width at level 0), then a 4×4 stride-2
  transposed conv; each block pops one skip and reads torch.cat([h, skip]).
- `ResidualBlock` is pre-activation: h = conv1(GELU(u)) + b1, then for each level embedding e
  h = GELU(h + W e), then h = conv2(GELU(h)) + b2 and again h = GELU(h + W' e) per embedding;
  out = h + shortcut(u), the shortcut an identity or a 1×1 conv. Without embeddings that is
  conv2(GELU(conv1(GELU(u)))) + shortcut(u). Every pass takes the fused ops' `backend` per call
  (default "torch"): "triton" (or "cuda", or "auto" on a GPU) runs every residual block through the
  fused conv kernels (ops.conv_block; inference only) and the level estimate's last linear + argmax
  through ops.level_argmax; the model holds no backend state.
- Downsampling is a stride-2 3×3 conv with circular padding; upsampling the authors' 4×4
  stride-2 transposed conv with zero padding 1 (it keeps the channel count). That transposed conv
  is not periodic at the borders, so, unlike the encoder, the decoder is not shift-equivariant.
- Optional multi-head self-attention over the H·W tokens after every block of
  `attention_levels` (both halves) and between the two middle blocks (the paper preset has
  none, as the paper's parameter count; the authors' config file asks for one head at 16²).
- Level heads read the middle output: conv 3×3 (C→C) and conv 1×1 (C→head_channels), each after
  a GELU, flatten, linear → head_hidden + GELU, linear → head_classes logits (the reference:
  head_hidden = head_classes = N + 1).
- `condition_decoder` (the refiner, as the authors' `ModernUnetDoubleRegressor_plus`): the
  softmax of each head goes through Linear + GELU, Linear + GELU to a `level_embedding`-wide
  vector, and every decoder block adds its own linear map of each head's vector after each conv.

Initialisation: with no normalisation, the weights are drawn to keep activations O(1) (normal,
std gain/√fan_in, zero bias): gain √2 for a layer read through a GELU, 1 for linear maps, and 0
for the last conv of each residual branch, every level-embedding map into a block, the attention
output projection and the output conv: every block starts as the identity (as in SkipInit /
Fixup), an emulator as persistence x_{t+1} = x_t, an ε-model at ε̂ = 0. (The authors use
PyTorch's default init; docs/method.md says why we do not.)
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.models import unet_cpu
from sns_engine.models.unet_config import UNetConfig
from sns_engine.ops.conv_block import block_backend, residual_block
from sns_engine.ops.level_argmax import level_argmax

GELU_GAIN = math.sqrt(2.0)   # He gain: keeps the second moment through a (near-)rectifier
def init_layer(layer: nn.Conv2d | nn.ConvTranspose2d | nn.Linear, gain: float) -> None:
    """Weights ~ N(0, gain²/fan_in), bias 0; fan_in = inputs each output reads.

    A transposed conv of kernel k and stride s feeds each output from (k/s)² taps per input
    channel."""
    weight = layer.weight
    if isinstance(layer, nn.ConvTranspose2d):
        fan_in = weight.shape[0] * (weight.shape[-1] // layer.stride[-1]) ** 2
    else:
        fan_in = weight[0].numel()
    nn.init.normal_(weight, std=gain / math.sqrt(fan_in))
    nn.init.zeros_(layer.bias)


def circular_conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """A conv with periodic boundaries ('same' size for stride 1)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                     padding_mode="circular")


def _embedding_maps(embeddings: int, width: int, channels: int) -> nn.ModuleList:
    """One Linear(width → channels) per level embedding, zero-initialised."""
    maps = nn.ModuleList(nn.Linear(width, channels) for _ in range(embeddings))
    for layer in maps:
        init_layer(layer, 0.0)
    return maps


class ResidualBlock(nn.Module):
    """Pre-activation residual block with optional level-embedding shifts (module docstring).

    forward(x, skip, embeddings, backend) reads u = cat([x, skip], 1); `embeddings` are the
    (B, width) level embeddings, one per head, in head order; `backend` is ops.conv_block's
    ("torch", "triton" or "auto")."""

    def __init__(self, c_in: int, c_out: int, embeddings: int = 0, width: int = 0):
        super().__init__()
        self.conv1 = circular_conv(c_in, c_out)
        self.conv2 = circular_conv(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.shift1 = _embedding_maps(embeddings, width, c_out)
        self.shift2 = _embedding_maps(embeddings, width, c_out)
        init_layer(self.conv1, GELU_GAIN)
        init_layer(self.conv2, 0.0)
        if isinstance(self.shortcut, nn.Conv2d):
            init_layer(self.shortcut, 1.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                embeddings: tuple[torch.Tensor, ...] = (), backend: str | None = "torch"
                ) -> torch.Tensor:
        return residual_block(self, x, skip, embeddings, backend)


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H·W positions of a feature map; `kind`
    "authors" normalises the softmax over the query index instead of the keys, as their
    `Attention_block` (one head, scale 1/√C; its GroupNorm is never applied, so there is none)."""

    def __init__(self, channels: int, heads: int, kind: str = "standard"):
        super().__init__()
        self.heads, self.kind = heads, kind
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        init_layer(self.qkv, 1.0)
        init_layer(self.proj, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)                                 # (B, heads, H·W, c/heads)
        if self.kind == "authors":   # weights (B, heads, i, j) normalised over the queries i
            out = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-2) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Unit(nn.Module):
    """A residual block, followed by self-attention at the attended levels."""

    def __init__(self, c_in: int, c_out: int, attention: bool, heads: int, embeddings: int = 0,
                 width: int = 0, kind: str = "standard"):
        super().__init__()
        self.block = ResidualBlock(c_in, c_out, embeddings, width)
        self.attention = SelfAttention(c_out, heads, kind) if attention else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                embeddings: tuple[torch.Tensor, ...] = (), backend: str | None = "torch"
                ) -> torch.Tensor:
        h = self.block(x, skip, embeddings, backend)
        return h if self.attention is None else self.attention(h)


class LevelHead(nn.Module):
    """Bottleneck features (B, C, g, g) → logits over the diffusion levels (B, classes)."""

    def __init__(self, channels: int, grid: int, mid_channels: int, hidden: int, classes: int):
        super().__init__()
        self.conv1 = circular_conv(channels, channels)
        self.conv2 = nn.Conv2d(channels, mid_channels, 1)
        self.fc1 = nn.Linear(mid_channels * grid * grid, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        for layer in (self.conv1, self.conv2, self.fc2):
            init_layer(layer, GELU_GAIN)
        init_layer(self.fc1, 1.0)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """Everything before the last linear: what `fc2` maps to the logits (B, hidden)."""
        h = self.conv2(F.gelu(self.conv1(F.gelu(h))))
        return F.gelu(self.fc1(h.flatten(1)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(h))


class LevelEmbedding(nn.Module):
    """A head's logits → softmax → Linear + GELU → Linear + GELU: the decoder's conditioning."""

    def __init__(self, classes: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(classes, width)
        self.fc2 = nn.Linear(width, width)
        init_layer(self.fc1, GELU_GAIN * math.sqrt(classes))   # softmax entries are O(1/classes)
        init_layer(self.fc2, GELU_GAIN)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc2(F.gelu(self.fc1(logits.softmax(dim=-1)))))


class UNet(nn.Module):
    """x (B, in, grid, grid) → (out (B, out, grid, grid), [logits (B, classes) per head]).

    Every pass takes `backend`, the fused ops' backend for this call: "torch" (default), "triton",
    "cuda" or "auto" (ops.dispatch); the residual blocks run ops.conv_block under it (Triton for
    "cuda": `block_backend`), `level_estimates` also ops.level_argmax. Weights and state_dict do
    not depend on it.

    On the CPU, in float32 inference with the "torch" conv backend, it runs the fast path of
    models.unet_cpu (unless `fast_cpu` is False, see `unet_cpu.use_fast_cpu`): the same arithmetic
    as the reference up to float rounding."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chans, heads = cfg.level_channels, cfg.attention_heads
        self.stem = circular_conv(cfg.in_channels, cfg.hidden)
        skips, c = [cfg.hidden], cfg.hidden
        self.encoder, self.down = nn.ModuleList(), nn.ModuleList()
        for i, ci in enumerate(chans):
            level = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                level.append(Unit(c, ci, i in cfg.attention_levels, heads, kind=cfg.attention))
                c = ci
                skips.append(c)
            self.encoder.append(level)
            if i < len(chans) - 1:
                self.down.append(circular_conv(c, c, stride=2))
                skips.append(c)
        self.middle = nn.ModuleList([Unit(c, c, cfg.mid_attention, heads, kind=cfg.attention),
                                     Unit(c, c, False, heads)])
        n_emb, width = (cfg.heads, cfg.embedding_width) if cfg.condition_decoder else (0, 0)
        self.decoder, self.up = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            level = nn.ModuleList()
            for out in [chans[i]] * cfg.blocks_per_level + [chans[i - 1] if i else cfg.hidden]:
                level.append(Unit(c + skips.pop(), out, i in cfg.attention_levels, heads,
                                  n_emb, width, cfg.attention))
                c = out
            self.decoder.append(level)
            if i > 0:
                self.up.append(nn.ConvTranspose2d(c, c, 4, stride=2, padding=1))
        self.out = circular_conv(c, cfg.out_channels)
        for layer in (self.stem, *self.down, *self.up):
            init_layer(layer, 1.0)
        init_layer(self.out, 0.0)
        bottleneck = cfg.grid // cfg.downsampling
        self.level_heads = nn.ModuleList(
            LevelHead(chans[-1], bottleneck, cfg.head_channels, cfg.head_hidden or cfg.head_classes,
                      cfg.head_classes) for _ in range(cfg.heads))
        self.level_embeddings = nn.ModuleList(
            LevelEmbedding(cfg.head_classes, width) for _ in range(n_emb))
        self.fast_cpu = True

    def _fast(self, x: torch.Tensor, backend: str | None) -> bool:
        """Whether this call takes the CPU fast path (models.unet_cpu)."""
        return unet_cpu.takes_fast_path(self, x, backend)

    @staticmethod
    def _unit(unit: Unit, h: torch.Tensor, convs: str, fast: bool,
              skip: torch.Tensor | None = None, embeddings: tuple[torch.Tensor, ...] = ()
              ) -> torch.Tensor:
        """`unit(h, skip, embeddings, convs)`, its residual block on the fast path if `fast`."""
        if not fast:
            return unit(h, skip, embeddings, convs)
        return unet_cpu.unit(unit, h, skip, embeddings)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.grid, cfg.grid):
            raise ValueError(f"U-Net input has shape {tuple(x.shape)}; this network takes "
                             f"(B, {cfg.in_channels}, {cfg.grid}, {cfg.grid})")

    def encode(self, x: torch.Tensor, backend: str | None = "torch"
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck features (after the middle block) and the skip stack."""
        self.check_input(x)
        convs, fast = block_backend(backend, x.device), self._fast(x, backend)
        h = unet_cpu.conv(self.stem, x) if fast else self.stem(x)
        skips = [h]
        for i, level in enumerate(self.encoder):
            for unit in level:
                h = self._unit(unit, h, convs, fast)
                skips.append(h)
            if i < len(self.down):
                h = unet_cpu.conv(self.down[i], h) if fast else self.down[i](h)
                skips.append(h)
        for unit in self.middle:
            h = self._unit(unit, h, convs, fast)
        return h, skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor],
               logits: list[torch.Tensor] | None = None, backend: str | None = "torch"
               ) -> torch.Tensor:
        """Decoder output from bottleneck features; consumes the skip stack. A decoder
        conditioned on the heads reads their `logits` (one per head, in head order)."""
        embeddings: tuple[torch.Tensor, ...] = ()
        convs, fast = block_backend(backend, h.device), self._fast(h, backend)
        if self.level_embeddings:
            if logits is None or len(logits) != len(self.level_embeddings):
                raise ValueError(f"this decoder is conditioned on {len(self.level_embeddings)} "
                                 f"heads' logits, got {0 if logits is None else len(logits)}")
            embeddings = tuple(unet_cpu.embedding(embed, z) if fast else embed(z)
                               for embed, z in zip(self.level_embeddings, logits, strict=True))
        for i, level in enumerate(self.decoder):
            for unit in level:
                h = self._unit(unit, h, convs, fast, skips.pop(), embeddings)
            if i < len(self.up):
                h = self.up[i](h)
        return unet_cpu.conv(self.out, h, gelu=True).contiguous() if fast else self.out(F.gelu(h))

    def _features(self, h: torch.Tensor, backend: str | None) -> list[torch.Tensor]:
        """Each head's `features(h)` (on the fast path, all heads' convs at once)."""
        heads = self.level_heads
        if not heads or not self._fast(h, backend):
            return [head.features(h) for head in heads]
        return unet_cpu.heads_features(heads, h)

    def level_logits(self, h: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Each head's logits (B, head_classes) from bottleneck features (`backend` only decides
        whether the heads' convs take the CPU fast path)."""
        features, fast = self._features(h, backend), self._fast(h, backend)
        return [unet_cpu.linear(head.fc2, f) if fast else head.fc2(f)
                for head, f in zip(self.level_heads, features, strict=True)]

    @unet_cpu.in_chunks
    def levels(self, x: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Only the level logits: encoder, middle and heads, no decoder."""
        return self.level_logits(self.encode(x, backend)[0], backend)

    @unet_cpu.in_chunks
    def level_estimates(self, x: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Each head's argmax level (B,) int64 from encoder, middle and heads, no decoder; the
        heads' last linear and the argmax are one fused op (ops.level_argmax, `backend`), which
        never writes the logits."""
        features = self._features(self.encode(x, backend)[0], backend)
        return [level_argmax(f, head.fc2.weight, head.fc2.bias, backend=backend)
                for head, f in zip(self.level_heads, features, strict=True)]

    @unet_cpu.in_chunks
    def forward(self, x: torch.Tensor, backend: str | None = "torch"
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, skips = self.encode(x, backend)
        logits = self.level_logits(h, backend)
        return self.decode(h, skips, logits, backend), logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def find_unet(model: object) -> UNet | None:
    """The U-Net of `model`: the model itself or its only UNet submodule; None if it has none
    (or several)."""
    if isinstance(model, UNet):
        return model
    found = [m for m in model.modules() if isinstance(m, UNet)] if isinstance(model, nn.Module) else []
    return found[0] if len(found) == 1 else None


FLOP_KINDS = ("forward", "levels")


def forward_flops(model: nn.Module, kind: str = "forward") -> int:
    """FLOPs per member of one pass of the U-Net in `model` (a UNet, emulator, refiner or
    Thermalizer): "forward" the full network, "levels" the levels-only pass (encoder, middle,
    heads). torch.utils.flop_counter's count (2 per multiply-add of convs and linears; activations
    and additions are not counted), made once per config on the meta device (the first count in a
    process takes a second or two: FlopCounterMode imports torch._dynamo)."""
    if kind not in FLOP_KINDS:
        raise ValueError(f"unknown pass {kind!r}; choose one of {FLOP_KINDS}")
    unet = find_unet(model)
    if unet is None:
        raise ValueError(f"{type(model).__name__} holds no single UNet to count")
    return _flops(unet.cfg, kind)


@functools.cache
def _flops(cfg: UNetConfig, kind: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet(cfg)
        x = torch.empty(1, cfg.in_channels, cfg.grid, cfg.grid)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        (unet if kind == "forward" else unet.levels)(x)
    return counter.get_total_flops()
