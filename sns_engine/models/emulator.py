"""The emulator: one physical step x_t → x_{t+1} as x_t plus a U-Net residual (docs/method.md §Network)."""

from __future__ import annotations

import torch
from torch import nn

from sns_engine.config import ConfigError
from sns_engine.models.unet import UNet
from sns_engine.models.unet_config import UNetConfig, unet_preset


class Emulator(nn.Module):
    """forward(x (B, C, H, W)) = x + U-Net(x): the network predicts x_{t+1} − x_t. `backend`: the
    fused ops' backend of the call (models.unet.UNet)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if cfg.in_channels != cfg.out_channels or cfg.heads:
            raise ConfigError(f"an emulator U-Net maps C → C channels with no level heads, got "
                              f"{cfg.in_channels} → {cfg.out_channels} with {cfg.heads} heads; "
                              "build its config with Emulator.unet_config")
        self.unet = UNet(cfg)

    @staticmethod
    def unet_config(preset: str, channels: int, grid: int, num_levels: int = 1000) -> UNetConfig:
        """The U-Net config of an emulator for `channels`-channel frames (num_levels unused)."""
        return unet_preset(preset, channels, channels, grid, heads=0, num_levels=num_levels,
                           model="emulator")

    def forward(self, x: torch.Tensor, backend: str | None = "torch") -> torch.Tensor:
        return x + self.unet(x, backend=backend)[0]
