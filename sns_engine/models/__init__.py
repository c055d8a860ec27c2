"""Neural models: the U-Net backbone and the three models built on it.

    emulator     x_t → x_{t+1} (residual U-Net)
    refiner      (long, y at n_y, x at n_x) → ε̂_y, ε̂_x, level logits for n_y and n_x (SNS)
    thermalizer  x at n → ε̂, level logits (unconditional baseline)
"""

from __future__ import annotations

from torch import nn

from sns_engine.models.emulator import Emulator
from sns_engine.models.refiner import Refiner
from sns_engine.models.thermalizer import Thermalizer
from sns_engine.models.unet import UNetConfig

MODEL_KINDS = {"emulator": Emulator, "refiner": Refiner, "thermalizer": Thermalizer}


def _kind(kind: str):
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind]


def model_unet_config(kind: str, preset: str, channels: int, grid: int,
                      num_levels: int = 1000) -> UNetConfig:
    """The U-Net config of model `kind` for fields of `channels` channels on a `grid`² grid."""
    return _kind(kind).unet_config(preset, channels, grid, num_levels)


def build_model(kind: str, cfg: UNetConfig) -> nn.Module:
    """A freshly initialised model of `kind` with backbone `cfg`."""
    return _kind(kind)(cfg)
