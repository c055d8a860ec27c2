"""The U-Net backbone shared by emulator, refiner and Thermalizer, with level heads.

Layout (DESIGN.md §3; no normalisation anywhere, GELU, circular padding):

    stem conv 3×3 ─► level 0 ─► down ─► level 1 ─► … ─► level L−1 ─► middle ─► (level heads)
                        │                  │                 │          │
    out conv 3×3 ◄─ level 0 ◄── up ◄── level 1 ◄── … ◄── level L−1 ◄────┘

- Level i has hidden·Π_{j≤i} channel_mults[j] channels and grid/2^i pixels per side (the paper
  preset: 64·128·256·512 on 64², 32², 16², 8²).
- Every encoder unit (stem, residual block, downsampling) pushes its output on a skip stack; the
  decoder has blocks_per_level + 1 residual blocks per level, each popping one skip and reading
  torch.cat([h, skip]) with its first conv (the Triton backend reads h and skip without the cat).
- `ResidualBlock`: out = shortcut(x) + GELU(conv2(GELU(conv1(x)))), shortcut = identity or a
  1×1 conv when the channel count changes. Each conv is conv → bias → activation, and the last
  is followed by the residual add: the sequence a fused conv kernel implements.
  `UNet.set_backend("triton")` runs every residual block through those kernels
  (ops.conv_block; inference only); "torch", the default, is the plain torch composition.
- Downsampling is a stride-2 3×3 conv with circular padding: learnable (unlike pooling), one op,
  and it commutes with shifts by 2 pixels, so the network stays periodic.
- Upsampling is a 2×2 stride-2 transposed conv: each pixel writes its own 2×2 patch, so there is
  no boundary and periodicity is exact (a 4×4 kernel with padding 1 would drop the wrap-around).
- Multi-head self-attention over the H·W tokens (scaled_dot_product_attention) after the residual
  blocks of `attention_levels` (both halves) and between the two middle blocks.
- Level heads read the middle output: conv 3×3 (C→C) + GELU, conv 1×1 (C→head_channels) + GELU,
  flatten, linear → head_hidden + GELU, linear → head_classes logits (reference: head_hidden =
  head_classes = N + 1).

Initialisation: with no normalisation, the weights are drawn to keep activations O(1) (normal,
std gain/√fan_in, zero bias): gain √2 before a GELU, 1 for linear maps (stem, shortcuts,
down/upsampling, q/k/v, logits), and 0 for the last conv of each residual branch, the attention
output projection and the output conv: every block starts as the identity (as in SkipInit /
Fixup), an emulator as persistence x_{t+1} = x_t, an ε-model at ε̂ = 0.
PyTorch's default init shrinks the signal ~√3 per layer; on the toy level test of
tests/models/test_losses.py it leaves the slower head at ≈0.35 accuracy after 100 steps where
this init reaches 0.55–0.8 (chance 0.2).

The whole backbone commutes with periodic shifts by multiples of 2^(L−1) pixels; the heads do not
(they flatten), which they need not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.config import ConfigError
from sns_engine.ops.conv_block import check_conv_backend, residual_block

GELU_GAIN = math.sqrt(2.0)   # He gain: keeps the second moment through a (near-)rectifier


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of one U-Net; JSON-able (`dataclasses.asdict`, `UNetConfig(**d)`)."""

    in_channels: int
    out_channels: int
    grid: int                                   # H = W of the input; fixes the head linear
    hidden: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)   # cumulative: level i = hidden·Π_{j≤i}
    blocks_per_level: int = 2
    attention_levels: tuple[int, ...] = (3,)    # level indices (0 = full resolution)
    mid_attention: bool = True
    attention_heads: int = 8
    heads: int = 0                              # number of level heads on the bottleneck
    head_classes: int = 1001                    # N + 1 levels
    head_channels: int = 16
    head_hidden: int | None = None              # None: head_classes (the reference)

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
        attended = [self.level_channels[i] for i in self.attention_levels]
        attended += [self.level_channels[-1]] if self.mid_attention else []
        if any(c % self.attention_heads for c in attended):
            raise ConfigError(f"attention_heads {self.attention_heads} does not divide the "
                              f"attended channel counts {attended}")
        if self.heads < 0 or self.head_classes < 2:
            raise ConfigError(f"need heads ≥ 0 and head_classes ≥ 2, got {self.heads} and "
                              f"{self.head_classes}")
        if self.head_hidden is not None and self.head_hidden < 1:
            raise ConfigError(f"UNetConfig.head_hidden must be ≥ 1 or None, got {self.head_hidden}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each resolution level, finest first."""
        return tuple(self.hidden * math.prod(self.channel_mults[:i + 1])
                     for i in range(len(self.channel_mults)))

    @property
    def downsampling(self) -> int:
        """Total downsampling factor 2^(L−1): the bottleneck is grid / downsampling per side."""
        return 2 ** (len(self.channel_mults) - 1)


PRESETS: dict[str, dict] = {
    # the reference network (DESIGN.md §3): 64·128·256·512, two blocks per level, attention at
    # the lowest level and in the middle, heads conv → 16 ch → linear N+1 → linear N+1
    "paper": dict(hidden=64, channel_mults=(1, 2, 2, 2), blocks_per_level=2,
                  attention_levels=(3,), mid_attention=True, attention_heads=8,
                  head_channels=16, head_hidden=None),
    # CPU-sized: 16·32·64, one block per level, attention in the middle only, heads with a
    # 64-wide hidden layer (a (N+1)² layer alone would be 1 M parameters per head)
    "small": dict(hidden=16, channel_mults=(1, 2, 2), blocks_per_level=1, attention_levels=(),
                  mid_attention=True, attention_heads=4, head_channels=16, head_hidden=64),
}


def unet_preset(name: str, in_channels: int, out_channels: int, grid: int, heads: int = 0,
                num_levels: int = 1000) -> UNetConfig:
    """The named preset ("paper" or "small") for the given channels, grid and level heads."""
    if name not in PRESETS:
        raise ConfigError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
    return UNetConfig(in_channels=in_channels, out_channels=out_channels, grid=grid, heads=heads,
                      head_classes=num_levels + 1, **PRESETS[name])


def init_layer(layer: nn.Conv2d | nn.ConvTranspose2d | nn.Linear, gain: float) -> None:
    """Weights ~ N(0, gain²/fan_in), bias 0; fan_in = inputs each output reads.

    For the transposed convs here (kernel = stride) that is the input channel count."""
    weight = layer.weight
    fan_in = weight.shape[0] if isinstance(layer, nn.ConvTranspose2d) else weight[0].numel()
    nn.init.normal_(weight, std=gain / math.sqrt(fan_in))
    nn.init.zeros_(layer.bias)


def circular_conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """A conv with periodic boundaries ('same' size for stride 1)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                     padding_mode="circular")


class ResidualBlock(nn.Module):
    """out = shortcut(x) + GELU(conv2(GELU(conv1(x)))), 3×3 circular convs, no normalisation.

    forward(x, skip) reads x = cat([x, skip], 1) (the decoder's skip connection). `backend` (a
    plain attribute, not in the state_dict) picks ops.conv_block's implementation."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = circular_conv(c_in, c_out)
        self.conv2 = circular_conv(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        init_layer(self.conv1, GELU_GAIN)
        init_layer(self.conv2, 0.0)
        if isinstance(self.shortcut, nn.Conv2d):
            init_layer(self.shortcut, 1.0)
        self.backend = "torch"

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        return residual_block(self, x, skip, self.backend)


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H·W positions of a feature map."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        init_layer(self.qkv, 1.0)
        init_layer(self.proj, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)                                 # (B, heads, H·W, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _unit(c_in: int, c_out: int, attention: bool, heads: int) -> nn.Module:
    block = ResidualBlock(c_in, c_out)
    return nn.Sequential(block, SelfAttention(c_out, heads)) if attention else block


class LevelHead(nn.Module):
    """Bottleneck features (B, C, g, g) → logits over the diffusion levels (B, classes)."""

    def __init__(self, channels: int, grid: int, mid_channels: int, hidden: int, classes: int):
        super().__init__()
        self.conv1 = circular_conv(channels, channels)
        self.conv2 = nn.Conv2d(channels, mid_channels, 1)
        self.fc1 = nn.Linear(mid_channels * grid * grid, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        for layer in (self.conv1, self.conv2, self.fc1):
            init_layer(layer, GELU_GAIN)
        init_layer(self.fc2, 1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv2(F.gelu(self.conv1(h))))
        return self.fc2(F.gelu(self.fc1(h.flatten(1))))


class UNet(nn.Module):
    """x (B, in, grid, grid) → (out (B, out, grid, grid), [logits (B, classes) per head])."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chans, heads = cfg.level_channels, cfg.attention_heads
        self.stem = circular_conv(cfg.in_channels, chans[0])
        skips, c = [chans[0]], chans[0]
        self.encoder, self.down = nn.ModuleList(), nn.ModuleList()
        for i, ci in enumerate(chans):
            level = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                level.append(_unit(c, ci, i in cfg.attention_levels, heads))
                c = ci
                skips.append(c)
            self.encoder.append(level)
            if i < len(chans) - 1:
                self.down.append(circular_conv(c, c, stride=2))
                skips.append(c)
        self.middle = nn.Sequential(ResidualBlock(c, c),
                                    SelfAttention(c, heads) if cfg.mid_attention else nn.Identity(),
                                    ResidualBlock(c, c))
        self.decoder, self.up = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            level = nn.ModuleList()
            for _ in range(cfg.blocks_per_level + 1):
                level.append(_unit(c + skips.pop(), chans[i], i in cfg.attention_levels, heads))
                c = chans[i]
            self.decoder.append(level)
            if i > 0:
                self.up.append(nn.ConvTranspose2d(c, chans[i - 1], 2, stride=2))
                c = chans[i - 1]
        self.out = circular_conv(c, cfg.out_channels)
        for layer in (self.stem, *self.down, *self.up):
            init_layer(layer, 1.0)
        init_layer(self.out, 0.0)
        bottleneck = cfg.grid // cfg.downsampling
        self.level_heads = nn.ModuleList(
            LevelHead(chans[-1], bottleneck, cfg.head_channels, cfg.head_hidden or cfg.head_classes,
                      cfg.head_classes) for _ in range(cfg.heads))

    def set_backend(self, backend: str) -> UNet:
        """Run every ResidualBlock with ops.conv_block `backend`: "torch" (default), "triton"
        (fused kernels, inference only) or "auto". Weights and state_dict are unchanged."""
        check_conv_backend(backend)
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                module.backend = backend
        return self

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.grid, cfg.grid):
            raise ValueError(f"U-Net input has shape {tuple(x.shape)}; this network takes "
                             f"(B, {cfg.in_channels}, {cfg.grid}, {cfg.grid})")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck features (after the middle block) and the skip stack."""
        self._check(x)
        h = self.stem(x)
        skips = [h]
        for i, level in enumerate(self.encoder):
            for unit in level:
                h = unit(h)
                skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
                skips.append(h)
        return self.middle(h), skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decoder output from bottleneck features; consumes the skip stack."""
        for i, level in enumerate(self.decoder):
            for unit in level:
                block, *after = unit if isinstance(unit, nn.Sequential) else (unit,)
                h = block(h, skips.pop())
                for module in after:
                    h = module(h)
            if i < len(self.up):
                h = self.up[i](h)
        return self.out(h)

    def level_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Each head's logits (B, head_classes) from bottleneck features."""
        return [head(h) for head in self.level_heads]

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Only the level estimate: encoder, middle and heads, no decoder."""
        return self.level_logits(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, skips = self.encode(x)
        return self.decode(h, skips), self.level_logits(h)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
