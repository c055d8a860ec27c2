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
from sns_engine.models.unet import UNetConfig, unet_preset

MODEL_KINDS = {"emulator": Emulator, "refiner": Refiner, "thermalizer": Thermalizer}

# (input frames, output frames, level heads) of each kind's U-Net
_IO = {"emulator": (1, 1, 0), "refiner": (3, 2, 2), "thermalizer": (1, 1, 1)}


def model_unet_config(kind: str, preset: str, channels: int, grid: int,
                      num_levels: int = 1000) -> UNetConfig:
    """The U-Net config of model `kind` for fields of `channels` channels on a `grid`² grid."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    frames_in, frames_out, heads = _IO[kind]
    return unet_preset(preset, frames_in * channels, frames_out * channels, grid, heads, num_levels)


def build_model(kind: str, cfg: UNetConfig) -> nn.Module:
    """A freshly initialised model of `kind` with backbone `cfg`."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](cfg)
