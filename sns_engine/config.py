"""Frozen configuration dataclasses and their JSON round trip.

Every config in the engine is a frozen dataclass of plain values. `to_dict` / `from_dict` convert
them to and from JSON-able dicts; `from_dict` rejects unknown keys so a typo or a config from a
newer version fails loudly instead of being ignored. A config checks itself when it is made: each
value's type (`check_type`), then its range, every error naming the field in the API's spelling
(`name=VALUE`, `name must ...`), which the CLI rewrites into its options. Each field carries a
one-line meaning (`field_help`): the CLI's option help and the API's docstrings (`document`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sns_engine.files import atomic_write

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type (a TypeError, and a ConfigError like the others)."""


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


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (`files.atomic_write`), so a kill never leaves half a file."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def field_help(cls: type) -> dict[str, str]:
    """Each field's one-line meaning (its `help` metadata), by field name."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}


def document(*classes: type) -> Callable[[F], F]:
    """Decorator: append to a function's docstring a line per parameter that is a field of `classes`
    and is not described there yet, with the field's meaning and the function's default."""
    def add(fn: F) -> F:
        meaning = {name: text for cls in classes for name, text in field_help(cls).items()}
        doc = fn.__doc__ or ""
        described = {line.strip().partition(":")[0] for line in doc.splitlines()}
        lines = [f"    {name}: {meaning[name]}"
                 + ("" if p.default is p.empty else f" (default {p.default!r})")
                 for name, p in inspect.signature(fn).parameters.items()
                 if name in meaning and name not in described]
        fn.__doc__ = doc.rstrip() + "\n" + "\n".join(lines) + "\n"
        return fn

    return add


def param_help(fn: Callable[..., Any]) -> dict[str, str]:
    """The meaning of each parameter that `fn`'s docstring describes (`name: meaning`, continued on
    indented lines), without its "(default ...)" ending."""
    docs: dict[str, str] = {}
    name = None
    for line in (inspect.getdoc(fn) or "").splitlines():
        match = re.match(r"(\w+): (.*)", line)
        if match:
            name, docs[match[1]] = match[1], match[2]
        elif name is not None and line.startswith(" "):
            docs[name] += " " + line.strip()
        else:
            name = None
    ending = r" \(default (?:[^()]|\([^()]*\))*\)$"  # e.g. "(default 4)", "(default (1, 10))"
    return {name: re.sub(ending, "", text) for name, text in docs.items()}


_KINDS = {bool: "a bool (True or False)", int: "an int", float: "a number", str: "a string"}


def check_type(name: str, value: Any, kind: type) -> None:
    """Raise ConfigTypeError unless `value` is a `kind` (bool, int, float or str); an int counts as a
    float, a bool counts as neither."""
    ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok or (kind is not bool and isinstance(value, bool)):
        raise ConfigTypeError(f"{name} must be {_KINDS[kind]}, got {type(value).__name__} "
                              f"{reprlib.repr(value)}")


def check_types(cls: type, values: dict[str, Any]) -> None:
    """`check_type` of every entry of `values` that is a field of `cls` with a bool, int, float or
    str annotation (others are left to the class)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):   # Optional: None allowed
            if value is None:
                continue
            hint = next((a for a in typing.get_args(hint) if a in _KINDS), None)
        if hint in _KINDS:
            check_type(name, value, hint)


SEED_LIMIT = 2 ** 32  # a seed keys one uint32 word (ops.rng) and is shifted into 64-bit generator seeds


def check_seed(name: str, value: Any) -> None:
    """Raise ConfigError (ConfigTypeError for a non-int) unless `value` is an int in [0, 2**32):
    every seed of the package (rollout noise, training draws, data trajectories) fits that."""
    check_type(name, value, int)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    if value >= SEED_LIMIT:
        raise ConfigError(f"{name} must be below 2**32 = {SEED_LIMIT}, got {value}")


def check_path(name: str, value: Any) -> None:
    """Raise ConfigError if the path argument `value` is an empty string (as a Path it would be
    the working directory, '.')."""
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{name} must not be an empty path, got {value!r}; name a file or folder")


def check_paths(**paths: Any) -> None:
    """`check_path` of each named path argument."""
    for name, value in paths.items():
        check_path(name, value)


def check_device(device: Any) -> None:
    """Raise ConfigError unless `device` (a name, a torch.device or None = automatic) is the CPU or
    a CUDA device this machine has."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use device='cpu'")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"there is no {dev}: this machine has {count} CUDA device(s), cuda:0 to "
                          f"cuda:{count - 1}")


# The U-Net sizes a TrainConfig may name: UNetConfig fields per preset (models.unet.unet_preset adds
# channels, grid and heads). Plain data here, so a config checks its preset without importing torch.
WALKS = ("ddpm", "ddim")               # reverse step of a walk: ancestral (the authors') or η = 0
LONG_FRAMES = ("initial", "lagged")    # the refiner's long-lag frame at rollout

# the authors' network as the paper counts it (73,727,522 parameters: their
# ModernUnetDoubleRegressor_plus without attention; docs/method.md §Network): 64 → 128·256·512,
# two blocks per level, heads conv → 16 ch → linear N+1 → linear N+1, decoder conditioned
# through N+1-wide level embeddings
_PAPER: dict[str, Any] = dict(hidden=64, channel_mults=(2, 2, 2), blocks_per_level=2,
                              attention_levels=(), mid_attention=False, attention_heads=1,
                              head_channels=16, head_hidden=None, level_embedding=None)
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "paper": _PAPER,
    # the authors' QG models (docs/method.md §Network, QG): emulator and Thermalizer as `paper`,
    # the refiner 128 → 256·512·1024 with their attention between the middle blocks
    # (CT/Training/Train_SNS_QG_config.py: 238,509,540 parameters by their count). "models"
    # holds per-model fields over the shared ones (unet_preset's `model`)
    "qg-paper": dict(_PAPER, models={"refiner": dict(hidden=128, mid_attention=True,
                                                     attention="authors")}),
    # CPU-sized: 8 → 16·32·64, one block per level, no attention, heads and level embeddings
    # 64 wide (an (N+1)² layer alone would be 1 M parameters)
    "small": dict(hidden=8, channel_mults=(2, 2, 2), blocks_per_level=1, attention_levels=(),
                  mid_attention=False, attention_heads=1, head_channels=16, head_hidden=64,
                  level_embedding=64),
}


def _field(default: Any, meaning: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (defaults: the authors' code, docs/method.md §Training)."""

    model: str = _field("refiner", "the model to train: emulator, refiner or thermalizer")
    preset: str = _field("small", "U-Net size: small (CPU-sized), paper (the authors' refiner, "
                                  "73.7 M parameters) or qg-paper (their QG refiner, 238.5 M)")
    steps: int = _field(2000, "optimizer steps")
    batch_size: int = _field(64, "training samples per optimizer step (over all ranks)")
    lr: float = _field(5e-5, "AdamW learning rate")
    weight_decay: float = _field(0.05, "AdamW weight decay")
    grad_clip: float = _field(1.0, "largest gradient norm (larger ones are scaled down)")
    ema_decay: float = _field(0.999, "decay of the weights' moving average (the bundle keeps the average)")
    lr_step: int = _field(600_000, "optimizer steps between learning-rate decays")
    lr_gamma: float = _field(0.9, "factor of each learning-rate decay")
    unroll: int = _field(4, "emulator: steps unrolled in the loss")
    lag: int = _field(100, "refiner: offset of the long-lag conditioning frame, in snapshots")
    ce_weight: float = _field(0.1, "refiner, thermalizer: weight of the level cross-entropy in the loss")
    level_bias: float = _field(0.0, "0 draws training noise levels uniformly; > 0 favours small levels")
    num_levels: int = _field(1000, "diffusion levels N")
    val_fraction: float = _field(0.1, "share of the trajectories held out for validation")
    val_every: int = _field(200, "optimizer steps between validations")
    checkpoint_every: int = _field(200, "optimizer steps between checkpoints (resume points)")
    seed: int = _field(0, "seed of the initial weights and of the batch draws")
    bf16: bool = _field(True, "bfloat16 autocast on CUDA (the bundle records false where it cannot "
                              "run, e.g. on the CPU)")

    def __post_init__(self) -> None:
        check_types(type(self), vars(self))
        if self.model not in ("emulator", "refiner", "thermalizer"):
            raise ConfigError(f"unknown model {self.model!r}; choose emulator, refiner or thermalizer")
        if self.preset not in UNET_PRESETS:
            raise ConfigError(f"unknown U-Net preset {self.preset!r}; choose one of "
                              f"{sorted(UNET_PRESETS)}")
        for name in ("steps", "batch_size", "unroll", "lag", "num_levels", "val_every",
                     "checkpoint_every", "lr_step"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.lr < float("inf"):
            raise ConfigError(f"lr must be positive and finite, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class RolloutConfig:
    """How an ensemble is rolled out (defaults: the authors' code, docs/method.md §Rollout)."""

    path: str = _field("left_down", "traversal path in the (n_x, n_y) plane")
    steps: int = _field(100, "physical steps to roll out")
    threshold: int | None = _field(None, "activation: refine the members whose estimated level (of the "
                                         "head(s) threshold_heads names) is at least this, 0 = every "
                                         "member; None: the bundle's system default (Kolmogorov 0, QG 7)")
    threshold_heads: str | None = _field(None, "which estimate the threshold reads: x (n̂_x) or either "
                                               "(the larger of n̂_x, n̂_y); None: the bundle's default")
    renoise: bool = _field(True, "re-noise every frame to its start level before walking")
    thermalizer_start: int = _field(11, "thermalizer: members estimated above this level are re-noised "
                                        "to their estimate and walked down (the authors' class 10)")
    thermalizer_stop: int = _field(5, "thermalizer: level the walk stops at (the authors' class 4)")
    noise_limit: int = _field(101, "thermalizer: members estimated above this level are flagged "
                                   "(the authors' class 100)")
    bound: float = _field(100.0, "members whose |state| (normalised units) exceeds this are flagged "
                                 "and frozen")
    seed: int = _field(0, "noise seed (a member's noise is keyed by the seed and its member id)")
    save_every: int = _field(1, "physical steps between stored states; must divide `steps`")
    level_floor: int = _field(0, "x is re-noised to at least this level before its walk, whatever "
                                 "its estimate (0: from the estimate, as published; beyond the "
                                 "authors)")
    level_floor_y: int = _field(0, "the same floor for y (0: from its estimate, as published)")
    every: int = _field(1, "refine on every m-th physical step only (steps 0, m, 2m, ...); the "
                           "others are bare emulator steps (1: every step, as published)")
    long: str = _field("initial", "long-lag frame: initial (the initial state for the whole "
                                  "rollout, as the authors' drivers) or lagged (the member's own "
                                  "state `lag` steps back, the relation the refiner was trained "
                                  "on; a ring buffer of `lag` states per member)")
    lag: int | None = _field(None, "long=lagged: steps back; None: the refiner's training lag")
    walk: str = _field("ddpm", "reverse step of the walks: ddpm (ancestral, fresh noise per "
                               "level, as published) or ddim (deterministic, eta = 0)")

    def __post_init__(self) -> None:
        from sns_engine.diffusion.paths import HEADS, get_path  # imports torch: only once a rollout is set up

        check_types(type(self), vars(self))
        get_path(self.path)
        for name in ("steps", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        steps, every = self.steps, self.save_every
        if every > steps:
            raise ConfigError(f"save_every={every} is larger than steps={steps}, so no state would be "
                              f"saved; use steps={every} or save_every={steps}")
        if steps % every:
            lost = steps % every
            raise ConfigError(f"steps={steps} is not a multiple of save_every={every}, so the last "
                              f"{lost} step{'s' * (lost > 1)} would not be saved; use "
                              f"steps={steps - lost} or steps={steps - lost + every}")
        for name in ("threshold", "thermalizer_stop", "noise_limit", "level_floor", "level_floor_y",
                     "seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("every", "lag"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name, choices in (("long", LONG_FRAMES), ("walk", WALKS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        check_seed("seed", self.seed)
        if self.threshold_heads not in (None, *HEADS):
            raise ConfigError(f"threshold_heads must be one of {HEADS}, got {self.threshold_heads!r}")
        if not self.bound > 0:
            raise ConfigError(f"bound must be positive, got {self.bound}")
        if not self.thermalizer_stop < self.thermalizer_start:
            raise ConfigError(f"thermalizer_stop={self.thermalizer_stop} must be below "
                              f"thermalizer_start={self.thermalizer_start}")
