"""The SNS refiner: a denoiser of the pair (y, x) that also estimates both noise levels.

Input: the channel concatenation (long-lag clean frame, y at level n_y, x at level n_x), so
3·C channels; the levels are *not* input. Output: ε̂_y and ε̂_x (2·C channels, y first) and two
level heads on the bottleneck, logits over the N + 1 levels of y and of x; the decoder reads both
heads' softmax (the authors' `ModernUnetDoubleRegressor_plus`, docs/method.md §Network).
A refiner imported from the authors' checkpoints has their N-class heads (`label_offset` 1,
models.labels): it still returns logits over our N + 1 levels, the clean one at −inf.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sns_engine.config import ConfigError
from sns_engine.models.labels import shift, to_levels
from sns_engine.models.unet import UNet
from sns_engine.models.unet_config import UNetConfig, unet_preset


class RefinerOutput(NamedTuple):
    eps_y: torch.Tensor      # (B, C, H, W)
    eps_x: torch.Tensor      # (B, C, H, W)
    logits_y: torch.Tensor   # (B, N + 1)
    logits_x: torch.Tensor   # (B, N + 1)


class Refiner(nn.Module):
    """forward(long, y, x), each (B, C, H, W) → RefinerOutput; C = cfg.out_channels / 2. Every
    pass takes `backend`, the fused ops' backend of the call (models.unet.UNet). With
    `cfg.label_offset` 1 its heads' class c is our level c + 1 (models.labels)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.label_offset = cfg.label_offset
        channels = cfg.out_channels // 2
        if cfg.out_channels != 2 * channels or cfg.in_channels != 3 * channels or cfg.heads != 2:
            raise ConfigError(f"a refiner U-Net maps 3·C → 2·C channels with 2 level heads, got "
                              f"{cfg.in_channels} → {cfg.out_channels} with {cfg.heads} heads; "
                              "build its config with Refiner.unet_config")
        self.channels = channels
        self.unet = UNet(cfg)

    @staticmethod
    def unet_config(preset: str, channels: int, grid: int, num_levels: int = 1000) -> UNetConfig:
        """The U-Net config of a refiner for `channels`-channel frames and N = num_levels."""
        return unet_preset(preset, 3 * channels, 2 * channels, grid, heads=2,
                           num_levels=num_levels, condition_decoder=True, model="refiner")

    def forward(self, long: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                backend: str | None = "torch") -> RefinerOutput:
        out, (logits_y, logits_x) = self.unet(torch.cat([long, y, x], dim=1), backend=backend)
        eps_y, eps_x = out.split(self.channels, dim=1)
        return RefinerOutput(eps_y, eps_x, to_levels(logits_y, self.label_offset),
                             to_levels(logits_x, self.label_offset))

    def levels(self, long: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
               backend: str | None = "torch") -> tuple[torch.Tensor, torch.Tensor]:
        """Only the level logits (logits_y, logits_x), skipping the decoder."""
        logits_y, logits_x = self.unet.levels(torch.cat([long, y, x], dim=1), backend=backend)
        return to_levels(logits_y, self.label_offset), to_levels(logits_x, self.label_offset)

    def estimate(self, long: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                 backend: str | None = "torch") -> tuple[torch.Tensor, torch.Tensor]:
        """The argmax levels (n̂_y, n̂_x), skipping the decoder (the authors' `ratio_class_both`,
        both heads from one encoder pass); the heads' last linear + argmax run fused (`backend`)."""
        n_y, n_x = self.unet.level_estimates(torch.cat([long, y, x], dim=1), backend=backend)
        return shift(n_y, self.label_offset), shift(n_x, self.label_offset)
