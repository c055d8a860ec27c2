"""Checkpoint bundles: one directory with `config.json` and one `.safetensors` file per model.

    bundle/
      config.json              system, grid, normalisation, schedule, per-model U-Net config,
                               file checksums, format version (nothing pickled)
      emulator.safetensors     EMA weights for inference
      refiner.safetensors
      thermalizer.safetensors  (optional)
      initial.safetensors      a few solver snapshots to start rollouts from (optional)

`load_bundle(path)` rebuilds models and schedule from the directory alone. Every weight file's
SHA-256 is recorded in config.json and checked on load, so a truncated or tampered file is
refused with a message naming it. A model whose training has not reached its last step (a run
that failed or was killed; its checkpoint is in train/) is not loaded: asking for it says to
rerun its training with --resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sns_engine._version import __version__
from sns_engine.config import ConfigError, from_dict, to_dict, write_json
from sns_engine.data.store import SystemSpec
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


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild a bundle's models (eval mode, EMA weights), schedule and initial states."""
    path = Path(path)
    config = read_config(path)
    if config is None:
        raise BundleError(f"{path} is not a bundle (no {CONFIG}); train models into it first")
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
            bundle.initial = _load_checked(path, config[INITIAL], "initial-state")["states"].to(device)
    except (KeyError, TypeError, ConfigError) as err:
        raise BundleError(f"bundle {path}: {CONFIG} is malformed ({err!r})") from err
    return bundle
