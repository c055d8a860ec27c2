"""Reference solvers of the chaotic systems and their registry (the papers' setup).

    get_system("kolmogorov", "cpu", spinup_steps=100)   →  a System
    SYSTEMS = ("kolmogorov", "qg"), PRESETS = ("paper", "cpu")

A System turns seeds into spun-up solver states and advances them, returning float32 snapshots
(B, T, C, grid, grid) laid out (trajectory, time, channel, y, x). Its state round-trips exactly
through a dict of numpy arrays, so a generation killed mid-way resumes bit-identically.
Each system module is imported only when asked for (Kolmogorov needs jax, QG needs pyqg); the
names and units of their stored fields are in `sns_engine.data.cf`, which figures and stores read.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

SYSTEMS = ("kolmogorov", "qg")
PRESETS = ("paper", "cpu")
_CLASSES = {"kolmogorov": ("sns_engine.systems.kolmogorov", "KolmogorovFlow"),
            "qg": ("sns_engine.systems.qg", "QGJet")}
# When the authors refine a member (docs/method.md §Activation), in our levels: Kolmogorov every
# member every step; QG when either head's class exceeds 5, i.e. our level ≥ 7.
REFINE_ACTIVATION = {"kolmogorov": {"threshold": 0, "threshold_heads": "x"},
                     "qg": {"threshold": 7, "threshold_heads": "either"}}


class SolverDivergedError(ValueError):
    """A solver state became NaN/Inf: the `system`, the `trajectory` (its index in the batch, or
    in the store once `generation` knows the block), `where` (which solver steps, once known) and
    the `fix` (what to change). Its args are its fields, so it pickles across worker processes."""

    def __init__(self, system: str, trajectory: int, fix: str, where: str = ""):
        super().__init__(system, trajectory, fix, where)
        self.system, self.trajectory, self.fix, self.where = system, trajectory, fix, where

    def __str__(self) -> str:
        sep = " " if self.fix.startswith("with ") else "; "  # System.divergence_fix: "with dt=..."
        return f"{self.system}: trajectory {self.trajectory} diverged (NaN/Inf){self.where}{sep}{self.fix}"


def require_positive(what: str, value: Any, allow_zero: bool = False) -> None:
    """Raise ValueError naming `what` unless `value` > 0 (or ≥ 0 with `allow_zero`)."""
    if not (value >= 0 if allow_zero else value > 0):
        bound = "0 or more" if allow_zero else "positive"
        raise ValueError(f"{what} must be {bound}, got {value!r}; pass a {bound} value")


def check_sizes(params: Any, positive: Sequence[str], non_negative: Sequence[str] = ()) -> None:
    """Raise ValueError naming the first numeric field of `params` that is not finite (NaN, ±inf),
    then the first of `positive` (`non_negative`) that is not > 0 (≥ 0)."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isfinite(value):
            raise ValueError(f"{type(params).__name__}.{field.name} must be finite, got {value!r}; "
                             "pass a finite value")
    for names, allow_zero in ((positive, False), (non_negative, True)):
        for name in names:
            require_positive(f"{type(params).__name__}.{name}", getattr(params, name), allow_zero)


def check_seeds(seeds: Sequence[int]) -> np.ndarray:
    """The seeds as uint32, refusing an empty list or a seed outside [0, 2**32)."""
    values = [int(s) for s in seeds]
    if not values:
        raise ValueError("seeds is empty; pass one seed per trajectory")
    bad = [s for s in values if not 0 <= s < 2 ** 32]
    if bad:
        raise ValueError(f"seeds must lie in [0, 2**32), got {bad[:3]}; "
                         "use data.store.trajectory_seed to derive them")
    return np.asarray(values, dtype=np.uint32)


def check_finite(system: str, snapshots: np.ndarray, fix: str, first: int = 0) -> None:
    """Raise SolverDivergedError naming the first trajectory of (B, …) `snapshots` with NaN/Inf;
    `first` is the batch index of `snapshots[0]`."""
    bad = ~np.isfinite(snapshots.reshape(snapshots.shape[0], -1)).all(axis=1)
    if bad.any():
        raise SolverDivergedError(system, first + int(np.argmax(bad)), fix)


def check_state_arrays(system: str, arrays: dict[str, np.ndarray],
                       shapes: dict[str, tuple[int, ...]], hint: str) -> None:
    """Raise ValueError unless `arrays` holds every key of `shapes`, each of shape (B, *shape)
    with one B; `hint` names the likely cause of a wrong shape."""
    missing = sorted(set(shapes) - set(arrays))
    if missing:
        raise ValueError(f"{system} state arrays lack {missing}; "
                         "were they saved by another system?")
    batch = np.shape(arrays[next(iter(shapes))])[:1]
    for key, shape in shapes.items():
        if np.shape(arrays[key]) != batch + shape:
            raise ValueError(f"{system} state array {key!r} has shape {np.shape(arrays[key])}, "
                             f"expected {batch + shape}; {hint}")


class System(abc.ABC):
    """A reference solver with fixed parameters; subclasses set the class attributes below."""

    name: ClassVar[str]
    channel_names: ClassVar[tuple[str, ...]]
    presets: ClassVar[dict[str, Any]]  # preset name → frozen parameter dataclass
    execution_fields: ClassVar[tuple[str, ...]] = ()  # parameters that cannot change results
    # parameters that choose what is recorded (spin-up length, sampling), not the dynamics
    recording_fields: ClassVar[tuple[str, ...]] = ("spinup_steps", "steps_per_snapshot")
    stability_hint: ClassVar[str] = ""  # a further way to stabilise the solver, after "lower dt"

    def __init__(self, preset: str, params: Any):
        self.preset = preset
        self.params = params

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    @property
    @abc.abstractmethod
    def grid(self) -> int:
        """Side of the square output grid."""

    @property
    @abc.abstractmethod
    def domain_length(self) -> float:
        """Physical side length of the periodic domain."""

    @property
    def snapshot_dt(self) -> float:
        """Physical time between stored snapshots."""
        return self.params.dt * self.params.steps_per_snapshot

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable identity: system, preset and every parameter except the
        `execution_fields` (so a generation may resume with, e.g., another worker count)."""
        params = {k: v for k, v in dataclasses.asdict(self.params).items()
                  if k not in self.execution_fields}
        return {"system": self.name, "preset": self.preset, **params}

    def changed_parameters(self) -> dict[str, tuple[Any, Any]]:
        """name → (value, the preset's value) of each dynamical parameter that differs from the
        preset (execution and recording fields aside)."""
        preset = self.presets.get(self.preset)
        if preset is None:
            return {}
        skip = {*self.execution_fields, *self.recording_fields}
        return {f.name: (getattr(self.params, f.name), getattr(preset, f.name, None))
                for f in dataclasses.fields(self.params)
                if f.name not in skip and getattr(self.params, f.name) != getattr(preset, f.name, None)}

    def divergence_fix(self) -> str:
        """What a divergence ran with and what to change: dt and every parameter changed from the
        preset; "lower dt", and "revert the changed parameters" when a physical one was changed."""
        changed = self.changed_parameters()
        names = list(dict.fromkeys(["dt", *changed]))  # dt first
        text = "with " + ", ".join(f"{k}={getattr(self.params, k)!r}" for k in names)
        if changed:
            text += (f" (changed from the {self.preset} preset: "
                     + ", ".join(f"{k} was {changed[k][1]!r}" for k in names if k in changed) + ")")
        if set(changed) - {"dt"}:
            return f"{text}; lower dt or revert the changed parameters"
        return f"{text}; lower dt{self.stability_hint}"

    @abc.abstractmethod
    def initial_states(self, seeds: Sequence[int]) -> Any:
        """One spun-up trajectory per seed; the same seed gives a bit-identical state."""

    @abc.abstractmethod
    def advance(self, state: Any, n_snapshots: int) -> tuple[Any, np.ndarray]:
        """Run `n_snapshots` × steps_per_snapshot solver steps; returns the new state and the
        float32 snapshots (B, n_snapshots, C, grid, grid). Raises SolverDivergedError on NaN/Inf."""

    @abc.abstractmethod
    def state_to_arrays(self, state: Any) -> dict[str, np.ndarray]:
        """The state as named numpy arrays (exact)."""

    @abc.abstractmethod
    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> Any:
        """Inverse of `state_to_arrays`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, params={self.params!r})"


def _choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")


def get_system(name: str, preset: str = "cpu", **overrides: Any) -> System:
    """The system `name` with the parameters of `preset`, fields replaced by `overrides`."""
    _choice("system", name, SYSTEMS)
    _choice("preset", preset, PRESETS)
    module, cls_name = _CLASSES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    params = cls.presets[preset]
    fields = {f.name: f for f in dataclasses.fields(params)}
    for key, value in overrides.items():
        _choice(f"{name} parameter", key, tuple(fields))
        if isinstance(getattr(params, key), float) and isinstance(value, int) \
                and not isinstance(value, bool):
            overrides[key] = float(value)  # CLI "--set dt=1" parses as int
    return cls(preset, dataclasses.replace(params, **overrides))
