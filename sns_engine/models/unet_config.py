"""The hyper-parameters of a U-Net (`UNetConfig`) and the named sizes (`unet_preset`); the
network itself is models.unet."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sns_engine.config import UNET_PRESETS, ConfigError
from sns_engine.models.labels import LABEL_OFFSETS

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
                num_levels: int = 1000, condition_decoder: bool = False,
                model: str | None = None) -> UNetConfig:
    """The named preset (config.UNET_PRESETS: "paper", "qg-paper" or "small") for the given
    channels, grid and level heads; `model` (emulator, refiner, thermalizer) picks the preset's
    fields for that model where it has its own (qg-paper's refiner)."""
    if name not in UNET_PRESETS:
        raise ConfigError(f"unknown U-Net preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    fields = dict(UNET_PRESETS[name])
    fields |= fields.pop("models", {}).get(model, {})
    return UNetConfig(in_channels=in_channels, out_channels=out_channels, grid=grid, heads=heads,
                      head_classes=num_levels + 1, condition_decoder=condition_decoder, **fields)
