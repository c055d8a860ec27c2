"""The Thermalizer baseline: an unconditional ε-model with one level head (docs/method.md §Network).
Imported from the authors' checkpoints its head has N classes (`label_offset` 1, models.labels)."""

from __future__ import annotations

import torch
from torch import nn

from sns_engine.config import ConfigError
from sns_engine.models.labels import shift, to_levels
from sns_engine.models.unet import UNet
from sns_engine.models.unet_config import UNetConfig, unet_preset


class Thermalizer(nn.Module):
    """forward(x (B, C, H, W) at an unknown level) → (ε̂ (B, C, H, W), logits (B, N + 1)). Every
    pass takes `backend`, the fused ops' backend of the call (models.unet.UNet). With
    `cfg.label_offset` 1 its head's class c is our level c + 1 (models.labels)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.label_offset = cfg.label_offset
        if cfg.in_channels != cfg.out_channels or cfg.heads != 1:
            raise ConfigError(f"a Thermalizer U-Net maps C → C channels with 1 level head, got "
                              f"{cfg.in_channels} → {cfg.out_channels} with {cfg.heads} heads; "
                              "build its config with Thermalizer.unet_config")
        self.unet = UNet(cfg)

    @staticmethod
    def unet_config(preset: str, channels: int, grid: int, num_levels: int = 1000) -> UNetConfig:
        """The U-Net config of a Thermalizer for `channels`-channel frames and N = num_levels."""
        return unet_preset(preset, channels, channels, grid, heads=1, num_levels=num_levels,
                           model="thermalizer")

    def forward(self, x: torch.Tensor, backend: str | None = "torch"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        eps, (logits,) = self.unet(x, backend=backend)
        return eps, to_levels(logits, self.label_offset)

    def levels(self, x: torch.Tensor, backend: str | None = "torch") -> torch.Tensor:
        """Only the level logits, skipping the decoder."""
        return to_levels(self.unet.levels(x, backend=backend)[0], self.label_offset)

    def estimate(self, x: torch.Tensor, backend: str | None = "torch") -> torch.Tensor:
        """The argmax level (B,), skipping the decoder; last linear + argmax fused (`backend`)."""
        return shift(self.unet.level_estimates(x, backend=backend)[0], self.label_offset)
