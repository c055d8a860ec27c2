"""Checkpoint bundles: one directory with `config.json` and one `.safetensors` file per model.

    bundle/
      config.json              system, grid, normalisation, schedule, per-model U-Net config,
                               file checksums, format version (nothing pickled)
      emulator.safetensors     EMA weights for inference
      refiner.safetensors
      thermalizer.safetensors  (optional)
      initial.safetensors      a few solver snapshots to start rollouts from (optional)

`load_bundle(path)` rebuilds models and schedule from the directory alone. It checks the whole
bundle first (`check_config`: every entry a rollout reads, each network's channels, grid and
heads against the system and schedule), so a broken bundle is refused before any work. Every
weight file's SHA-256 is recorded in config.json and checked on load, so a truncated or tampered
file is refused with a message naming it. A model whose training has not reached its last step (a run
that failed or was killed; its checkpoint is in train/) is not loaded: asking for it says to
rerun its training with --resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sns_engine._version import __version__
from sns_engine.config import ConfigError, from_dict, to_dict, write_json
from sns_engine.data.store import SystemSpec
from sns_engine.diffusion.paths import HEADS
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.files import atomic_write
from sns_engine.models import MODEL_KINDS, build_model
from sns_engine.models.unet import UNetConfig
from sns_engine.systems import REFINE_ACTIVATION

FORMAT = 2      # 2: the authors' network (conditioned decoder, pre-activation blocks)
CONFIG = "config.json"
INITIAL = "initial"


class BundleError(ValueError):
    """A bundle directory is missing, corrupt, from an incompatible version, or mismatched."""


@dataclass
class Bundle:
    """Everything a rollout needs: system identity, normalisation, schedule, models, initial states."""

    path: Path
    system: SystemSpec
    normalisation: dict[str, list[float]]
    schedule: CosineSchedule
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    initial: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)       # config.json as loaded
    unfinished: dict[str, str] = field(default_factory=dict)  # kind → how far its training got

    @property
    def activation(self) -> dict[str, Any]:
        """The system's default activation (threshold, threshold_heads) recorded at creation."""
        return self.config["activation"]

    @property
    def scale(self) -> torch.Tensor:
        """Per-channel std (C, 1, 1): physical field = normalised field × scale."""
        return torch.tensor(self.normalisation["std"], dtype=torch.float32)[:, None, None]

    def model(self, kind: str) -> torch.nn.Module:
        if kind in self.unfinished:
            raise BundleError(f"bundle {self.path}: model {kind} is not finished "
                              f"({self.unfinished[kind]}); rerun its training into this bundle "
                              "with resume=True to finish it")
        if kind not in self.models:
            raise BundleError(f"bundle {self.path} has no {kind} (it has {sorted(self.models)}); "
                              f"train a {kind} into it first")
        return self.models[kind]

    def checksums(self, kinds: list[str], initial: bool = True) -> dict[str, str]:
        """File name → SHA-256 (as config.json records them and loading verified) of the models
        `kinds` and, with `initial`, of the shipped initial states: what a rollout reads."""
        entries = [self.config["models"][kind] for kind in kinds]
        if initial and INITIAL in self.config:
            entries.append(self.config[INITIAL])
        return {entry["file"]: entry["sha256"] for entry in entries}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The bundle's config.json as a dict, None if the directory has none yet."""
    file = Path(path) / CONFIG
    if not file.exists():
        return None
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{file} is not valid JSON ({err}); restore it or retrain") from err
    if config.get("format", 0) > FORMAT:
        raise BundleError(f"{file} has bundle format {config['format']} (sns_engine "
                          f"{config.get('version')}), newer than this sns_engine ({__version__}) "
                          f"reads ({FORMAT}); upgrade sns_engine")
    if config.get("format", 0) < FORMAT:
        raise BundleError(f"{file} has bundle format {config.get('format')} (sns_engine "
                          f"{config.get('version')}): its networks predate the authors' "
                          "architecture this version runs; retrain them into a new bundle")
    return config


def new_config(system: SystemSpec, normalisation: dict[str, list[float]],
               schedule: CosineSchedule) -> dict[str, Any]:
    """The config.json of an empty bundle for `system` data normalised by `normalisation`."""
    return {"format": FORMAT, "version": __version__, "system": system.to_json(),
            "normalisation": normalisation,
            "schedule": {"num_levels": schedule.num_levels, "s": schedule.s,
                         "max_beta": schedule.max_beta},
            "activation": dict(REFINE_ACTIVATION[system.system]),
            "models": {}}


def save_calibration(path: str | Path, calibration: dict[str, Any]) -> None:
    """Record a head calibration (sns_engine.calibration) in the bundle's config.json."""
    config = read_config(path)
    if config is None:
        raise BundleError(f"{path} is not a bundle (no {CONFIG})")
    config["calibration"] = calibration
    write_json(Path(path) / CONFIG, config)


def check_compatible(config: dict[str, Any], system: SystemSpec, where: str) -> None:
    """Refuse to mix data of another system/grid/channel count into the bundle of `config` (its
    config.json as a dict)."""
    try:
        held = SystemSpec.from_json(config["system"])
    except (KeyError, TypeError) as err:
        raise BundleError(f"{where}: the bundle's {CONFIG} has no valid system entry ({err!r}); "
                          "restore it or use another --out") from err
    for key, attr in (("name", "system"), ("preset", "preset"), ("grid", "grid"),
                      ("channels", "channels")):
        if getattr(held, attr) != getattr(system, attr):
            raise BundleError(f"{where}: bundle holds {key}={getattr(held, attr)!r} but the "
                              f"data has {key}={getattr(system, attr)!r}; use another --out")


def save_model(path: str | Path, config: dict[str, Any], kind: str, unet: UNetConfig,
               state: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> None:
    """Write `kind`'s weights and record them in config.json (weights first, config last)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    file = path / f"{kind}.safetensors"
    _save_tensors(file, state)
    config = _merge_on_disk(path, config)
    config["models"][kind] = {"unet": to_dict(unet), "file": file.name, "sha256": _sha256(file),
                              **(extra or {})}
    write_json(path / CONFIG, config)


def _save_tensors(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors written atomically (`files.atomic_write`), so a kill never leaves half a file."""
    with atomic_write(file) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def _merge_on_disk(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config as it is on disk now (or `config` for a new bundle): a process changes only
    its own entry, so two kinds trained at once into one bundle keep each other's."""
    return read_config(path) or config


def save_initial(path: str | Path, config: dict[str, Any], states: torch.Tensor) -> None:
    """Ship normalised initial-condition snapshots (K, C, H, W) with the bundle."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    file = path / f"{INITIAL}.safetensors"
    _save_tensors(file, {"states": states.float()})
    config = _merge_on_disk(path, config)
    config[INITIAL] = {"file": file.name, "sha256": _sha256(file), "count": int(states.shape[0])}
    write_json(path / CONFIG, config)


def _load_checked(path: Path, entry: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    file = path / entry["file"]
    if not file.exists():
        raise BundleError(f"bundle {path}: {what} weights {file.name} are missing")
    if _sha256(file) != entry["sha256"]:
        raise BundleError(f"bundle {path}: {file.name} does not match its checksum in {CONFIG} "
                          "(truncated or modified); restore it or retrain")
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise BundleError(f"bundle {path}: {file.name} is not a valid safetensors file "
                          f"({err})") from err


def _check_fits(path: Path, file: str, kind: str, model: torch.nn.Module,
                state: dict[str, torch.Tensor]) -> None:
    """Refuse weights that do not fit the network config.json describes, naming the first
    tensor that differs (missing, unexpected or of another shape)."""
    expected = model.state_dict()
    for name in sorted(set(expected) | set(state)):
        if name not in state or name not in expected or state[name].shape != expected[name].shape:
            have = list(state[name].shape) if name in state else "missing"
            want = list(expected[name].shape) if name in expected else "absent"
            raise BundleError(f"bundle {path}: {file} does not fit the {kind} {CONFIG} describes "
                              f"({name} is {have} in the weights, {want} in {CONFIG}); restore the "
                              "bundle's files or retrain")


# (input, output) channels of each model's U-Net per channel of the system, and its level heads
_NETWORK = {"emulator": (1, 1, 0), "refiner": (3, 2, 2), "thermalizer": (1, 1, 1)}


def check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse (BundleError) a config.json that lacks or garbles an entry a rollout reads, or whose
    networks do not fit its system and schedule, naming the entry and the fix."""
    fix = "restore the bundle's files or retrain it"

    def bad(entry: str, what: str) -> BundleError:
        return BundleError(f"bundle {path}: {CONFIG} entry {entry} {what}; {fix}")

    def number(entry: str, value: Any, low: float, high: float = math.inf, integer: bool = False) -> None:
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not ok or not (math.isfinite(value) and low <= value <= high):
            kind = "an integer" if integer else "a finite number"
            raise bad(entry, f"is {value!r}, not {kind} in [{low}, {high}]")

    def entry_of(parent: dict[str, Any], key: str, where: str, kind: type = dict) -> Any:
        if not isinstance(parent, dict) or key not in parent:
            raise bad(f"{where}{key}", "is missing")
        if not isinstance(parent[key], kind):
            raise bad(f"{where}{key}", f"is {type(parent[key]).__name__}, not {kind.__name__}")
        return parent[key]

    system = entry_of(config, "system", "")
    for key in ("name", "preset", "params", "channels", "channel_names", "grid", "snapshot_dt",
                "domain_length"):
        entry_of(system, key, "system.", object)
    number("system.channels", system["channels"], 1, integer=True)
    number("system.grid", system["grid"], 1, integer=True)
    number("system.snapshot_dt", system["snapshot_dt"], 1e-300)
    channels, grid = system["channels"], system["grid"]
    if not isinstance(system["channel_names"], list) or len(system["channel_names"]) != channels:
        raise bad("system.channel_names", f"is {system['channel_names']!r}, not {channels} names")
    norm = entry_of(config, "normalisation", "")
    for key in ("std", *(("mean",) if "mean" in norm else ())):
        values = entry_of(norm, key, "normalisation.", list)
        if len(values) != channels:
            raise bad(f"normalisation.{key}", f"has {len(values)} values for {channels} channel(s)")
        for i, v in enumerate(values):
            number(f"normalisation.{key}[{i}]", v, 1e-300 if key == "std" else -math.inf)
    sched = entry_of(config, "schedule", "")
    number("schedule.num_levels", entry_of(sched, "num_levels", "schedule.", int), 1, integer=True)
    number("schedule.s", entry_of(sched, "s", "schedule.", object), 1e-300)
    number("schedule.max_beta", entry_of(sched, "max_beta", "schedule.", object), 1e-300, 1.0)
    act = entry_of(config, "activation", "")
    number("activation.threshold", entry_of(act, "threshold", "activation.", int), 0, integer=True)
    if entry_of(act, "threshold_heads", "activation.", str) not in HEADS:
        raise bad("activation.threshold_heads", f"is {act['threshold_heads']!r}, not one of {HEADS}")
    for kind, entry in entry_of(config, "models", "").items():
        where = f"models.{kind}."
        if kind not in MODEL_KINDS:
            raise bad(f"models.{kind}", f"names an unknown model kind; known: {sorted(MODEL_KINDS)}")
        entry_of(entry, "file", where, str)
        entry_of(entry, "sha256", where, str)
        try:
            unet = from_dict(UNetConfig, entry_of(entry, "unet", where))
        except (ConfigError, TypeError) as err:
            raise bad(f"{where}unet", f"is not a valid U-Net config ({err})") from err
        ins, outs, heads = _NETWORK[kind]
        want = {"in_channels": ins * channels, "out_channels": outs * channels, "grid": grid,
                "heads": heads,   # heads without a clean class have N (label_offset 1, models.labels)
                **({"head_classes": sched["num_levels"] + 1 - unet.label_offset} if heads else {})}
        for key, value in want.items():
            if getattr(unet, key) != value:
                raise bad(f"{where}unet.{key}", f"is {getattr(unet, key)}, but the system and "
                          f"schedule need {value}")
    if INITIAL in config:
        entry_of(config[INITIAL], "file", f"{INITIAL}.", str)
        entry_of(config[INITIAL], "sha256", f"{INITIAL}.", str)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild a bundle's models (eval mode, EMA weights), schedule and initial states, after
    checking the whole bundle (`check_config`, then each file's checksum and tensor shapes)."""
    path = Path(path)
    config = read_config(path)
    if config is None:
        raise BundleError(f"{path} is not a bundle (no {CONFIG}); train models into it first")
    check_config(path, config)
    try:
        sched = config["schedule"]
        schedule = CosineSchedule(sched["num_levels"], sched["s"], sched["max_beta"])
        bundle = Bundle(path, SystemSpec.from_json(config["system"]), config["normalisation"],
                        schedule.to(device), config=config)
        if "activation" not in config:
            raise KeyError("activation")
        for kind, entry in config["models"].items():
            if kind not in MODEL_KINDS:
                raise BundleError(f"bundle {path}: unknown model kind {kind!r}")
            step, steps = entry.get("step"), entry.get("train", {}).get("steps")
            if step is not None and steps is not None and step < steps:
                bundle.unfinished[kind] = f"trained {step} of {steps} steps"
                continue
            model = build_model(kind, from_dict(UNetConfig, entry["unet"]))
            state = _load_checked(path, entry, kind)
            _check_fits(path, entry["file"], kind, model, state)
            model.load_state_dict(state)
            bundle.models[kind] = model.to(device).eval().requires_grad_(False)
        if INITIAL in config:
            states = _load_checked(path, config[INITIAL], "initial-state").get("states")
            system = bundle.system
            if (states is None or states.ndim != 4
                    or tuple(states.shape[1:]) != (system.channels, system.grid, system.grid)
                    or not torch.isfinite(states).all()):
                shape = "missing" if states is None else list(states.shape)
                raise BundleError(f"bundle {path}: {config[INITIAL]['file']} does not hold finite "
                                  f"initial states (K, {system.channels}, {system.grid}, "
                                  f"{system.grid}) ('states' is {shape}); restore the bundle's "
                                  "files or retrain it")
            bundle.initial = states.to(device)
    except (KeyError, TypeError, ConfigError) as err:
        raise BundleError(f"bundle {path}: {CONFIG} is malformed ({err!r})") from err
    return bundle
