"""sns_engine: self-refining neural surrogates (SNS) of chaotic dynamical systems.

The public API is five functions; each imports its machinery on first call, so `import sns_engine`
stays cheap:

    rollout(bundle=None, *, batch, steps, path="left_down", ...)  ensemble rollout (engine)
    load_bundle(path)                                             models + schedule from a bundle
    generate_data(system, out, trajectories, snapshots, ...)      solver dataset → Zarr store
    train(model, data, out, **hyper_parameters)                   train into a bundle
    evaluate(ensemble, reference, ...)                            metrics of an ensemble (dict)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    import torch

    from sns_engine.bundle import Bundle
    from sns_engine.data.store import TrajectoryStore
    from sns_engine.engine.rollout import RolloutResult


def rollout(bundle: str | Path | Bundle | None = None, **kwargs: Any) -> RolloutResult:
    """Roll out an ensemble; see `sns_engine.engine.ensemble.rollout` for every option."""
    from sns_engine.engine.ensemble import rollout as _rollout

    return _rollout(bundle, **kwargs)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild a checkpoint bundle (models in eval mode with EMA weights, schedule, initial states)."""
    from sns_engine.bundle import load_bundle as _load

    return _load(path, device)


def generate_data(system: str, out: str | Path, trajectories: int, snapshots: int,
                  preset: str = "cpu", seed: int = 0, **kwargs: Any) -> TrajectoryStore:
    """Run the `system` solver and stream its snapshots into a resumable Zarr store at `out`."""
    from sns_engine.data import generate
    from sns_engine.systems import get_system

    overrides = kwargs.pop("overrides", {})
    return generate(get_system(system, preset, **overrides), out, trajectories, snapshots,
                    seed=seed, **kwargs)


def train(model: str, data: str | Path, out: str | Path, resume: bool = False, quiet: bool = True,
          **hyper_parameters: Any) -> Path:
    """Train `model` (emulator | refiner | thermalizer) on the store `data` into the bundle `out`."""
    from sns_engine.config import TrainConfig
    from sns_engine.train.loop import train as _train

    return _train(TrainConfig(model=model, **hyper_parameters), data, out, resume=resume, quiet=quiet)


def calibrate(bundle: str | Path, data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Level-head calibration of a bundle on held-out frames of `data` (sns_engine.calibration)."""
    from sns_engine.calibration import calibrate as _calibrate

    return _calibrate(bundle, data, **kwargs)


def evaluate(ensemble: str | Path, reference: str | Path, **kwargs: Any) -> dict[str, Any]:
    """DESIGN.md §5 metrics of an ensemble store against a solver store, per time window."""
    from sns_engine.diagnostics.evaluate import evaluate as _evaluate

    return _evaluate(ensemble, reference, **kwargs)
