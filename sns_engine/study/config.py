"""A study's settings: what runs (data sizes, models, methods) and the criteria it is judged by.

A *method* is a rollout path with optional settings, written `path[key=value,...]`:

    emulator                          the bare emulator
    left_down                         SNS path A as the authors run it (the bundle's activation)
    left_down[threshold=calibrated]   SNS with a threshold read from the heads' calibration on clean
                                      frames before any rollout (`calibrated_threshold`)
    thermalizer[match=left_down]      the Thermalizer with its start tuned, on a pilot run before
                                      the study's rollouts, to the member-forwards of `left_down`

Any other key is a RolloutConfig field (`thermalizer_start=20`, `threshold=5`, ...).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sns_engine.config import SEED_LIMIT, RolloutConfig, TrainConfig, from_dict
from sns_engine.diffusion.paths import get_path

METHODS = ("emulator", "thermalizer", "left_down", "diagonal", "fix_short")
SOLVER = "solver"  # the solver control ensemble's label in plans, reports, tables and figures
MODELS = ("emulator", "refiner", "thermalizer")
STUDY_SET = {"train": ("model", "steps"), "rollout": ("path", "steps", "seed", "save_every")}
RECIPE_KEYS = ("system", "preset", "sizes", "overrides", "train", "rollout", "methods", "bundle",
               "calibration_data", "criteria", "description", "notes", "expected_cost")
SIZES = ("trajectories", "snapshots", "reference_trajectories", "reference_snapshots",
         "trajectory_batch", "train_steps", "members", "horizon", "save_every", "windows")
_METHOD = re.compile(r"^(\w+)(?:\[(.*)\])?$")


class StudyError(ValueError):
    """A study's settings are invalid or clash with the study already in the output folder."""


@dataclass(frozen=True)
class Method:
    """One compared method: its label (as written), rollout path and settings."""

    label: str
    path: str
    settings: dict[str, Any]

    @property
    def model(self) -> str | None:
        return get_path(self.path).model


def slug(label: str) -> str:
    """A method's label as a file name: `left_down[threshold=5]` → `left_down-threshold-5`."""
    return re.sub(r"[^\w.]+", "-", label).strip("-")


def parse_method(label: str) -> Method:
    """`path[key=value,...]` → Method; values are JSON where they parse, strings otherwise."""
    match = _METHOD.match(label.strip())
    if not match:
        raise StudyError(f"method {label!r} is not of the form path or path[key=value,...]")
    path, body = match.group(1), match.group(2)
    try:
        get_path(path)
    except ValueError as err:
        raise StudyError(f"method {label!r}: {err}") from None
    settings: dict[str, Any] = {}
    for item in filter(None, (body or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"method {label!r}: setting {item!r} is not key=value")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value.strip()
    return Method(label, path, settings)


@dataclass(frozen=True)
class Criteria:
    """Pass/fail rules written into plan.md before any rollout (issue: the decisive experiment).
    Errors are compared with the solver floor: the solver control ensemble's value, same windows."""

    drift_unstable_fraction: float = 0.75   # emulator drifts: ≥ this share unstable by the horizon
    drift_floor_factor: float = 3.0         # … and its last-window spectrum error ≥ this × floor
    attractor_floor_factor: float = 1.5     # SNS on the attractor: band errors and W1 ≤ this × floor
    energy_tolerance: float = 0.1           # … and kinetic energy within this of the solver's


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's results (JSON round trip with `config.to_dict`)."""

    system: str                          # kolmogorov | qg
    preset: str = "cpu"                  # system preset
    overrides: dict[str, Any] = field(default_factory=dict)   # system parameters (`--set`)
    bundle: str | None = None            # use this bundle's models instead of training them
    trajectories: int = 8                # training store (unused with `bundle`)
    snapshots: int = 400
    reference_trajectories: int = 8      # held-out reference store (seed + 1)
    reference_snapshots: int = 400       # stored states per reference trajectory (save_every apart)
    reference_spinup: int | None = None  # solver steps of spin-up of reference and control stores
    trajectory_batch: int = 8            # trajectories solved together (vmap / QG workers)
    train_steps: int = 1000              # optimizer steps of each model
    train: dict[str, Any] = field(default_factory=dict)       # further TrainConfig fields
    rollout: dict[str, Any] = field(default_factory=dict)     # further RolloutConfig fields
    members: int = 16
    horizon: int = 200                   # physical steps of each rollout
    save_every: int = 1                  # rollout steps between stored (and evaluated) states
    windows: int = 4                     # evaluation time windows
    stability_threshold: float = 1.0     # symmetric spectrum error beyond which a member is unstable
    calibration_quantile: float = 0.99   # threshold=calibrated: this quantile of n̂_x on clean frames + 1
    calibration_data: str | None = None  # … frames held out of this solver store (default: train.zarr)
    pilot_steps: int = 100               # match=...: physical steps of each pilot rollout
    criteria: Criteria = field(default_factory=Criteria)
    seed: int = 0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        if isinstance(self.criteria, dict):
            object.__setattr__(self, "criteria", from_dict(Criteria, self.criteria))
        for name in (*SIZES, "pilot_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise StudyError(f"study {name} must be a positive integer, got {value!r}")
        if type(self.seed) is not int or not 0 <= self.seed < SEED_LIMIT - 2:
            raise StudyError(f"study seed must be an integer in [0, 2**32 − 2) (the reference and "
                             f"control stores use seed + 1 and seed + 2), got {self.seed!r}")
        if not 0 < self.calibration_quantile < 1:
            raise StudyError(f"calibration_quantile must lie in (0, 1), got {self.calibration_quantile}")
        labels = [m.strip() for m in self.methods]
        if not labels or len(set(labels)) != len(labels):
            raise StudyError(f"methods must be distinct, got {list(self.methods)}")
        methods = {m.label: m for m in map(parse_method, labels)}
        for m in methods.values():
            self._check_method(m, methods)
        for section, fixed in STUDY_SET.items():
            clash = sorted(set(getattr(self, section)) & set(fixed))
            if clash:
                raise StudyError(f"{section} settings {clash} are set by the study itself; "
                                 "use the study's options (--train-steps, --horizon, --seed, ...)")
        from_dict(RolloutConfig, dict(self.rollout))
        if self.horizon % self.save_every:
            raise StudyError(f"horizon ({self.horizon}) must be a multiple of save_every "
                             f"({self.save_every})")
        if self.reference_snapshots < self.horizon // self.save_every:
            raise StudyError(f"reference_snapshots ({self.reference_snapshots}) must cover the "
                             f"horizon: ≥ horizon / save_every = {self.horizon // self.save_every}")
        if self.bundle is None:
            self._check_training()
        elif self.calibration_data is None and any(
                m.settings.get("threshold") == "calibrated" for m in methods.values()):
            raise StudyError("threshold=calibrated with a given bundle needs calibration_data: the "
                             "solver store the bundle was trained on (its held-out frames are read)")

    def _check_method(self, m: Method, methods: dict[str, Method]) -> None:
        # match= and threshold=calibrated are resolved by the study; every other setting is checked
        settings = {k: v for k, v in m.settings.items()
                    if k != "match" and (k, v) != ("threshold", "calibrated")}
        try:
            from_dict(RolloutConfig, {**self.rollout, **settings, "path": m.path})
        except ValueError as err:
            raise StudyError(f"method {m.label!r}: {err}") from None
        if m.settings.get("threshold", 0) == "calibrated" and m.model != "refiner":
            raise StudyError(f"method {m.label!r}: threshold=calibrated needs a refiner path")
        target = m.settings.get("match")
        if target is not None and (m.path != "thermalizer" or target not in methods
                                   or methods[target].settings.get("match")):
            raise StudyError(f"method {m.label!r}: match= tunes a thermalizer to another listed "
                             f"method without match=, got {target!r} (methods: {list(methods)})")

    def _check_training(self) -> None:
        if self.trajectories < 2:
            raise StudyError("study trajectories must be ≥ 2: training holds the last out for "
                             f"validation; got {self.trajectories}")
        lag = self.train_config("refiner").lag if "refiner" in self.models else 0
        need = max(lag + 2, self.train_config("emulator").unroll + 1)
        if self.snapshots < need:
            raise StudyError(f"study snapshots ({self.snapshots}) must be ≥ {need} for the long "
                             "lag and the emulator's unroll; add snapshots or lower them "
                             "(--train-set lag=... / unroll=...)")

    def train_config(self, kind: str) -> TrainConfig:
        """The TrainConfig of model `kind`; the long lag defaults to min(100, snapshots // 4)."""
        lag = min(100, max(1, self.snapshots // 4))
        return from_dict(TrainConfig, {"lag": lag, **self.train, "model": kind,
                                       "steps": self.train_steps})

    @property
    def method_specs(self) -> tuple[Method, ...]:
        return tuple(parse_method(m) for m in self.methods)

    @property
    def models(self) -> tuple[str, ...]:
        """The models the methods need (the emulator always)."""
        need = {"emulator"} | {m.model for m in self.method_specs} - {None}
        return tuple(m for m in MODELS if m in need)


def study_command(cfg: StudyConfig, out: str | Path) -> str:
    """The `sns-engine study` command line that reproduces `cfg` into `out`, every setting explicit."""
    args = ["sns-engine", "study", cfg.system, "--preset", cfg.preset, "--out", str(out)]
    for name in ("bundle", "calibration_data"):
        if getattr(cfg, name) is not None:
            args += ["--" + name.replace("_", "-"), getattr(cfg, name)]
    for name in (*SIZES, "stability_threshold", "calibration_quantile", "pilot_steps", "seed"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    if cfg.reference_spinup is not None:
        args += ["--reference-spinup", str(cfg.reference_spinup)]
    args += ["--methods", *cfg.methods]
    for option, values in (("--set", cfg.overrides), ("--train-set", cfg.train),
                           ("--rollout-set", cfg.rollout)):
        for key, value in values.items():
            args += [option, f"{key}={value}"]
    return shlex.join(args)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe JSON file as `run_study` keyword arguments (its `sizes` flattened in)."""
    recipe = json.loads(Path(path).read_text())
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise StudyError(f"recipe {path} has unknown keys {unknown}; valid: {list(RECIPE_KEYS)}")
    kwargs = {k: recipe[k] for k in ("system", "preset", "overrides", "train", "rollout", "methods",
                                     "bundle", "calibration_data", "criteria") if k in recipe}
    return {**kwargs, **recipe.get("sizes", {})}
