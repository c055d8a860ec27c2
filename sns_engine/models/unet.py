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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.config import UNET_PRESETS, ConfigError
from sns_engine.models.labels import LABEL_OFFSETS
from sns_engine.ops.conv_block import block_backend, residual_block
from sns_engine.ops.level_argmax import level_argmax

GELU_GAIN = math.sqrt(2.0)   # He gain: keeps the second moment through a (near-)rectifier
# "standard": softmax over the keys; "authors": their Attention_block (CT/Models/Unet.py), one
# head, softmax over the *query* index (docs/method.md §Where we differ, 8)
ATTENTION_KINDS = ("standard", "authors")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of one U-Net; JSON-able (`dataclasses.asdict`, `UNetConfig(**d)`)."""

    in_channels: int
    out_channels: int
    grid: int                                   # H = W of the input; fixes the head linear
    hidden: int = 64                            # channels of the input projection
    channel_mults: tuple[int, ...] = (2, 2, 2)  # cumulative: level i = hidden·Π_{j≤i}
    blocks_per_level: int = 2
    attention_levels: tuple[int, ...] = ()      # level indices (0 = full resolution)
    mid_attention: bool = False
    attention_heads: int = 1
    attention: str = "standard"                 # "standard" or "authors" (ATTENTION_KINDS)
    heads: int = 0                              # number of level heads on the bottleneck
    head_classes: int = 1001                    # N + 1 levels
    head_channels: int = 16
    head_hidden: int | None = None              # None: head_classes (the reference)
    label_offset: int = 0                       # level of head class 0 (1: no clean class, labels)
    condition_decoder: bool = False             # decoder blocks read the heads' softmax
    level_embedding: int | None = None          # its width; None: head_classes (the reference)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        for name in ("in_channels", "out_channels", "grid", "hidden", "blocks_per_level",
                     "attention_heads", "head_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"UNetConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ConfigError(f"UNetConfig.channel_mults must be non-empty positive integers, got "
                              f"{self.channel_mults}")
        levels = len(self.channel_mults)
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad:
            raise ConfigError(f"UNetConfig.attention_levels {bad} out of range; levels are "
                              f"0..{levels - 1}")
        if self.grid % self.downsampling:
            raise ConfigError(f"grid {self.grid} is not divisible by the downsampling factor "
                              f"{self.downsampling} of {levels} levels; use fewer channel_mults")
        widths = (self.hidden, *self.level_channels)
        attended = [c for i in self.attention_levels for c in widths[i:i + 2]]
        attended += [self.level_channels[-1]] if self.mid_attention else []
        if any(c % self.attention_heads for c in attended):
            raise ConfigError(f"attention_heads {self.attention_heads} does not divide the "
                              f"attended channel counts {attended}")
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"UNetConfig.attention must be one of {ATTENTION_KINDS}, got "
                              f"{self.attention!r}")
        if self.attention == "authors" and self.attention_heads != 1:
            raise ConfigError("UNetConfig.attention='authors' has one head (their Attention_block); "
                              f"got attention_heads={self.attention_heads}")
        if self.heads < 0 or self.head_classes < 2:
            raise ConfigError(f"need heads ≥ 0 and head_classes ≥ 2, got {self.heads} and "
                              f"{self.head_classes}")
        for name in ("head_hidden", "level_embedding"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"UNetConfig.{name} must be ≥ 1 or None, got {getattr(self, name)}")
        if self.label_offset not in LABEL_OFFSETS or (self.label_offset and not self.heads):
            raise ConfigError(f"UNetConfig.label_offset must be one of {LABEL_OFFSETS} (nonzero only "
                              f"with level heads), got {self.label_offset!r}")
        if self.condition_decoder and not self.heads:
            raise ConfigError("UNetConfig.condition_decoder needs level heads (heads ≥ 1)")

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each resolution level, finest first."""
        return tuple(self.hidden * math.prod(self.channel_mults[:i + 1])
                     for i in range(len(self.channel_mults)))

    @property
    def downsampling(self) -> int:
        """Total downsampling factor 2^(L−1): the bottleneck is grid / downsampling per side."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def embedding_width(self) -> int:
        """Width of each head's level embedding (0 when the decoder is not conditioned)."""
        return (self.level_embedding or self.head_classes) if self.condition_decoder else 0


def unet_preset(name: str, in_channels: int, out_channels: int, grid: int, heads: int = 0,
                num_levels: int = 1000, condition_decoder: bool = False) -> UNetConfig:
    """The named preset (config.UNET_PRESETS: "paper" or "small") for the given channels, grid
    and level heads."""
    if name not in UNET_PRESETS:
        raise ConfigError(f"unknown U-Net preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    return UNetConfig(in_channels=in_channels, out_channels=out_channels, grid=grid, heads=heads,
                      head_classes=num_levels + 1, condition_decoder=condition_decoder,
                      **UNET_PRESETS[name])


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


def _gelu_nhwc(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """GELU of a channels_last tensor through its contiguous (B, H, W, C) view, which ATen runs
    in its vectorised kernel (a channels_last tensor takes a strided path ≈ 1.6× slower)."""
    view = t.permute(0, 2, 3, 1)
    return (torch.ops.aten.gelu_(view) if inplace else F.gelu(view)).permute(0, 3, 1, 2)


def _circular_pad(t: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """GELU(t) (or t) padded periodically by one pixel per side, channels_last: what a circular
    3×3 conv reads. Padded as (B, 1, H, W, C), where F.pad copies whole rows (on NCHW it makes
    narrow strided copies and returns NCHW)."""
    view = (_gelu_nhwc(t) if gelu else t).permute(0, 2, 3, 1)[:, None]
    return F.pad(view, (0, 0, 1, 1, 1, 1), mode="circular")[:, 0].permute(0, 3, 1, 2)


def _conv_fast(conv: nn.Conv2d, t: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """conv(GELU(t)) (or conv(t)) of a circular conv, on the CPU fast path."""
    return F.conv2d(_circular_pad(t, gelu), conv.weight, conv.bias, conv.stride)


def _shifted(h: torch.Tensor, shifts: nn.ModuleList, embeddings: tuple[torch.Tensor, ...]
             ) -> torch.Tensor:
    """h ← GELU(h + shift(e)) per level embedding, in place."""
    for shift, e in zip(shifts, embeddings, strict=True):
        _gelu_nhwc(h.add_(shift(e)[:, :, None, None]), inplace=True)
    return h


FAST_CPU_CHUNK = 16  # members per fast-path call, as the engine's CPU chunk: activations in cache


def _in_chunks(method: Callable) -> Callable:
    """Run a UNet pass of x on the CPU fast path in chunks of FAST_CPU_CHUNK members, the outputs
    (a tensor, or a tuple or list of them) concatenated (the small preset at 64²: 10–20 % faster
    at batch 64 than in one call)."""
    @functools.wraps(method)
    def run(self: UNet, x: torch.Tensor, backend: str | None = "torch"):
        self._check(x)
        if x.shape[0] <= FAST_CPU_CHUNK or not self._fast(x, backend):
            return method(self, x, backend)
        return _cat([method(self, part, backend) for part in x.split(FAST_CPU_CHUNK)])

    return run


def _cat(parts: list) -> object:
    """Concatenate the chunks' outputs along the batch, keeping their structure."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return type(parts[0])(_cat(list(column)) for column in zip(*parts, strict=True))


def _stacked(convs: Iterable[nn.Conv2d]) -> tuple[torch.Tensor, torch.Tensor]:
    """The convs' weights and biases concatenated along the output channels."""
    convs = list(convs)
    return torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs])


def _block_fast(block: ResidualBlock, x: torch.Tensor, skip: torch.Tensor | None,
                embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`ResidualBlock` (ops.conv_block's arithmetic) on the CPU fast path, shifts in place."""
    u = x if skip is None else torch.cat([x, skip], dim=1)
    h = _shifted(_conv_fast(block.conv1, u, gelu=True), block.shift1, embeddings)
    h = _shifted(_conv_fast(block.conv2, h, gelu=True), block.shift2, embeddings)
    return h.add_(block.shortcut(u))


class UNet(nn.Module):
    """x (B, in, grid, grid) → (out (B, out, grid, grid), [logits (B, classes) per head]).

    Every pass takes `backend`, the fused ops' backend for this call: "torch" (default), "triton",
    "cuda" or "auto" (ops.dispatch); the residual blocks run ops.conv_block under it (Triton for
    "cuda": `block_backend`), `level_estimates` also ops.level_argmax. Weights and state_dict do
    not depend on it.

    On the CPU, in inference (no tensor needs a gradient), with the "torch" conv backend and
    float32, it runs a fast path (unless `fast_cpu` is False, see `use_fast_cpu`): channels_last
    activations (oneDNN's direct convs, no reorders), the periodic halo written by hand with the
    pre-activation GELU's output, GELUs on the contiguous NHWC view, shifts and residuals added in
    place, the heads' convs batched, batches in chunks of FAST_CPU_CHUNK members; the same
    arithmetic as the reference up to float rounding. Outputs are NCHW either way (`encode`'s
    features and skips are channels_last on the fast path)."""

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
        """Whether this call takes the CPU fast path (class docstring)."""
        return (self.fast_cpu and x.device.type == "cpu" and x.dtype == torch.float32
                and block_backend(backend, x.device) == "torch"
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled()
                         and (x.requires_grad or any(p.requires_grad for p in self.parameters()))))

    @staticmethod
    def _unit(unit: Unit, h: torch.Tensor, convs: str, fast: bool,
              skip: torch.Tensor | None = None, embeddings: tuple[torch.Tensor, ...] = ()
              ) -> torch.Tensor:
        """`unit(h, skip, embeddings, convs)`, its residual block on the fast path if `fast`."""
        if not fast:
            return unit(h, skip, embeddings, convs)
        h = _block_fast(unit.block, h, skip, embeddings)
        return h if unit.attention is None else unit.attention(h)

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.grid, cfg.grid):
            raise ValueError(f"U-Net input has shape {tuple(x.shape)}; this network takes "
                             f"(B, {cfg.in_channels}, {cfg.grid}, {cfg.grid})")

    def encode(self, x: torch.Tensor, backend: str | None = "torch"
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck features (after the middle block) and the skip stack."""
        self._check(x)
        convs, fast = block_backend(backend, x.device), self._fast(x, backend)
        h = _conv_fast(self.stem, x) if fast else self.stem(x)
        skips = [h]
        for i, level in enumerate(self.encoder):
            for unit in level:
                h = self._unit(unit, h, convs, fast)
                skips.append(h)
            if i < len(self.down):
                h = _conv_fast(self.down[i], h) if fast else self.down[i](h)
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
        if self.level_embeddings:
            if logits is None or len(logits) != len(self.level_embeddings):
                raise ValueError(f"this decoder is conditioned on {len(self.level_embeddings)} "
                                 f"heads' logits, got {0 if logits is None else len(logits)}")
            embeddings = tuple(embed(z) for embed, z in zip(self.level_embeddings, logits, strict=True))
        convs, fast = block_backend(backend, h.device), self._fast(h, backend)
        for i, level in enumerate(self.decoder):
            for unit in level:
                h = self._unit(unit, h, convs, fast, skips.pop(), embeddings)
            if i < len(self.up):
                h = self.up[i](h)
        return _conv_fast(self.out, h, gelu=True).contiguous() if fast else self.out(F.gelu(h))

    def _features(self, h: torch.Tensor, backend: str | None) -> list[torch.Tensor]:
        """Each head's `features(h)`. On the fast path the heads share GELU(h) and its halo, and
        run their convs as one: conv1 stacked, conv2 grouped."""
        heads = self.level_heads
        if not heads or not self._fast(h, backend):
            return [head.features(h) for head in heads]
        mid = F.conv2d(_circular_pad(h, gelu=True), *_stacked(head.conv1 for head in heads))
        mid = F.conv2d(_gelu_nhwc(mid, inplace=True), *_stacked(head.conv2 for head in heads),
                       groups=len(heads))
        return [F.gelu(head.fc1(m.flatten(1)))
                for head, m in zip(heads, mid.chunk(len(heads), 1), strict=True)]

    def level_logits(self, h: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Each head's logits (B, head_classes) from bottleneck features (`backend` only decides
        whether the heads' convs take the CPU fast path)."""
        features = self._features(h, backend)
        return [head.fc2(f) for head, f in zip(self.level_heads, features, strict=True)]

    @_in_chunks
    def levels(self, x: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Only the level logits: encoder, middle and heads, no decoder."""
        return self.level_logits(self.encode(x, backend)[0], backend)

    @_in_chunks
    def level_estimates(self, x: torch.Tensor, backend: str | None = "torch") -> list[torch.Tensor]:
        """Each head's argmax level (B,) int64 from encoder, middle and heads, no decoder; the
        heads' last linear and the argmax are one fused op (ops.level_argmax, `backend`), which
        never writes the logits."""
        features = self._features(self.encode(x, backend)[0], backend)
        return [level_argmax(f, head.fc2.weight, head.fc2.bias, backend=backend)
                for head, f in zip(self.level_heads, features, strict=True)]

    @_in_chunks
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


def use_fast_cpu(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Let every U-Net in `model` take the CPU fast path (the default), or not (the eager NCHW
    reference, e.g. the authors' loop as published)."""
    for module in model.modules():
        if isinstance(module, UNet):
            module.fast_cpu = enabled
    return model


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
