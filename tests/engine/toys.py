"""Small deterministic stand-in networks for engine tests (no training, no U-Net).

The toy refiner's level estimates depend on each member's own frames, so a batch holds members
with very different (n̂_x, n̂_y) — including ones below the activation threshold."""

from __future__ import annotations

import torch
from torch import nn

from sns_engine.engine.denoiser import DenoiserOutput, LevelLogits


class ToyEmulator(nn.Module):
    def __init__(self, channels: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular")

    def forward(self, x, backend="torch"):  # backend: the models' interface; a toy ignores it
        return x + 0.3 * torch.tanh(self.conv(x))


class ToyRefiner(nn.Module):
    """ε̂ from a conv over (long, y, x); level logits peaked at a member-dependent level."""

    def __init__(self, channels: int = 1, num_levels: int = 1000, max_level: int = 40, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3 * channels, 2 * channels, 3, padding=1, padding_mode="circular")
        self.channels, self.num_levels, self.max_level = channels, num_levels, max_level

    def _logits(self, frame):
        # coarse on purpose: ulp-level differences between batched and single-member runs must
        # not move a member to another level
        centre = (torch.round(frame.flatten(1).abs().mean(1) * 8) * 5) % self.max_level
        k = torch.arange(self.num_levels + 1, device=frame.device, dtype=frame.dtype)
        return -(k[None] - centre.round()[:, None]) ** 2

    def forward(self, long, y, x, backend="torch"):
        eps = 0.5 * torch.tanh(self.conv(torch.cat([long, y, x], dim=1)))
        c = self.channels
        return DenoiserOutput(eps[:, :c], eps[:, c:], self._logits(y), self._logits(x))

    def levels(self, long, y, x, backend="torch"):
        return LevelLogits(self._logits(y), self._logits(x))

    def estimate(self, long, y, x, backend="torch"):
        return self._logits(y).argmax(-1), self._logits(x).argmax(-1)


class ToyThermalizer(nn.Module):
    def __init__(self, channels: int = 1, num_levels: int = 1000, seed: int = 2):
        super().__init__()
        self.inner = ToyRefiner(channels, num_levels, max_level=60, seed=seed)

    def forward(self, x, backend="torch"):
        out = self.inner(x, x, x)
        return out.eps_x, out.logits_x

    def levels(self, x, backend="torch"):
        return self.inner.levels(x, x, x).logits_x

    def estimate(self, x, backend="torch"):
        return self.levels(x).argmax(-1)
