"""Frozen configuration dataclasses and their JSON round trip.

Every config in the engine is a frozen dataclass of plain values. `to_dict` / `from_dict` convert
them to and from JSON-able dicts; `from_dict` rejects unknown keys so a typo or a config from a
newer version fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


def to_dict(config: Any) -> dict[str, Any]:
    """A frozen dataclass (possibly nested) as a JSON-able dict; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild `cls` from `to_dict` output: nested dataclasses and tuples restored, unknown keys refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None) and value is not None:
                return _coerce(arg, value)
    return value


def replace(config: T, **changes: Any) -> T:
    """`dataclasses.replace` with a clear error for a field that does not exist."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"{type(config).__name__} has no field(s) {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(config, **changes)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename), so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (defaults: the reference code's, DESIGN.md §3)."""

    model: str = "refiner"           # emulator | refiner | thermalizer
    preset: str = "small"            # U-Net preset
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    lr_step: int = 600_000           # StepLR period (optimizer steps)
    lr_gamma: float = 0.9
    unroll: int = 4                  # emulator: steps unrolled in the loss
    lag: int = 100                   # refiner: long-lag frame offset (snapshots)
    ce_weight: float = 0.1           # refiner/thermalizer: λ on the level cross-entropy
    level_bias: float = 0.0          # 0 = uniform levels; >0 favours small levels
    num_levels: int = 1000
    val_fraction: float = 0.1        # share of trajectories held out for validation
    val_every: int = 200
    checkpoint_every: int = 200
    seed: int = 0
    bf16: bool = True                # autocast on CUDA only

    def __post_init__(self) -> None:
        if self.model not in ("emulator", "refiner", "thermalizer"):
            raise ConfigError(f"unknown model {self.model!r}; choose emulator, refiner or thermalizer")
        for name in ("steps", "batch_size", "unroll", "lag", "num_levels", "val_every",
                     "checkpoint_every", "lr_step"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.lr < float("inf"):
            raise ConfigError(f"lr must be positive and finite, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class RolloutConfig:
    """How an ensemble is rolled out (DESIGN.md §3; defaults follow the reference code)."""

    path: str = "left_down"
    steps: int = 100
    threshold: int | None = None     # activation: refine when the head(s) estimate ≥ threshold;
    threshold_heads: str | None = None   # "x" or "either"; None: the bundle's system default
    renoise: bool = True             # re-noise frames to their start level before walking
    thermalizer_start: int = 11      # our levels: the authors' class 10 (docs/method.md)
    thermalizer_stop: int = 5        # their class 4
    noise_limit: int = 101           # thermalizer: n̂ above it flags the member (their 100)
    bound: float = 100.0             # |state| (normalised units) above it flags the member
    seed: int = 0
    save_every: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.threshold is not None and self.threshold < 0:
            raise ConfigError(f"threshold must be ≥ 0 (0 refines every member), got {self.threshold}")
        if self.threshold_heads not in (None, "x", "either"):
            raise ConfigError(f"threshold_heads must be 'x' or 'either', got {self.threshold_heads!r}")
        if not 0 <= self.thermalizer_stop < self.thermalizer_start:
            raise ConfigError("thermalizer_stop must be in [0, thermalizer_start), got "
                              f"{self.thermalizer_stop} and {self.thermalizer_start}")
