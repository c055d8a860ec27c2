"""sns_engine: self-refining neural surrogates (SNS) of chaotic dynamical systems.

The public API is six functions; each imports its machinery on first use, so `import sns_engine`
stays cheap (`rollout` is the engine's own function, `sns_engine.engine.ensemble.rollout`):

    rollout(bundle=None, *, batch, steps, path="left_down", out=None, ...)   ensemble rollout
    load_bundle(path, device="cpu")                                          models + schedule
    generate_data(system, out, trajectories, snapshots, ...)                 solver data → store
    train(model, data, out, *, steps, batch_size, lr, ...)                   train into a bundle
    evaluate(ensemble, reference, *, windows, ...)                           metrics (dict)
    calibrate(bundle, data, *, samples, ...)                                 level-head calibration

Each checks its arguments before any work and raises a ValueError naming the bad one (a TypeError
too for a wrong type); long calls show a progress bar unless `quiet=True`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sns_engine.config import TrainConfig, check_device, check_type, check_types, document

# The subpackage sns_engine.train (empty __init__) is imported now, so that the function `train`
# defined below is `sns_engine.train` for good: importing the subpackage later would rebind the name.
importlib.import_module("sns_engine.train")

__version__ = "0.2.0"
__all__ = ["calibrate", "evaluate", "generate_data", "load_bundle", "rollout", "train"]

if TYPE_CHECKING:
    import torch

    from sns_engine.bundle import Bundle
    from sns_engine.data.store import TrajectoryStore
    from sns_engine.engine.ensemble import rollout


def __getattr__(name: str) -> Any:
    """`sns_engine.rollout`, imported on first use (it needs torch)."""
    if name == "rollout":
        from sns_engine.engine.ensemble import rollout

        return rollout
    raise AttributeError(f"module 'sns_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a checkpoint bundle: its models (eval mode, EMA weights), schedule and initial states.

    path: the bundle directory (config.json and one .safetensors file per model)
    device: where the models and initial states go: "cpu", "cuda" or "cuda:N" (default 'cpu')
    """
    from sns_engine.bundle import load_bundle as _load

    check_device(device)
    return _load(path, device)


def generate_data(system: str, out: str | Path, trajectories: int, snapshots: int,
                  preset: str = "cpu", seed: int = 0, *, trajectory_batch: int = 8,
                  time_chunk: int = 32, overrides: dict[str, Any] | None = None,
                  overwrite: bool = False, quiet: bool = False) -> TrajectoryStore:
    """Run the `system` solver and stream its snapshots into a resumable Zarr store at `out`.

    A rerun with the same arguments continues a killed generation; a finished one returns at once.

    system: "kolmogorov" (2-D Kolmogorov flow, jax-cfd) or "qg" (two-layer jet, pyqg)
    out: store path (*.zarr)
    trajectories: independent trajectories, each from its own seed derived from `seed`
    snapshots: stored snapshots per trajectory
    preset: solver parameters: "cpu" (small, fast) or "paper" (default 'cpu')
    seed: seed of the trajectories' initial states (default 0)
    trajectory_batch: trajectories solved together (vmapped for kolmogorov, worker processes for
        qg) (default 8)
    time_chunk: snapshots per Zarr chunk and between resume points (default 32)
    overrides: system parameters to change, e.g. {"spinup_steps": 100} (default None: the preset's)
    overwrite: replace an existing store made with other arguments (default False)
    quiet: no progress bar (default False)
    """
    from sns_engine.data import generate
    from sns_engine.systems import get_system

    for name, value in (("trajectories", trajectories), ("snapshots", snapshots), ("seed", seed),
                        ("trajectory_batch", trajectory_batch), ("time_chunk", time_chunk)):
        check_type(name, value, int)
    overrides = dict(overrides or {})
    check_types(type(get_system(system, preset).params), overrides)
    return generate(get_system(system, preset, **overrides), out, trajectories, snapshots, seed=seed,
                    trajectory_batch=trajectory_batch, time_chunk=time_chunk, overwrite=overwrite,
                    quiet=quiet)


@document(TrainConfig)
def train(model: str, data: str | Path, out: str | Path, *, preset: str = TrainConfig.preset,
          steps: int = TrainConfig.steps, batch_size: int = TrainConfig.batch_size,
          lr: float = TrainConfig.lr, weight_decay: float = TrainConfig.weight_decay,
          grad_clip: float = TrainConfig.grad_clip, ema_decay: float = TrainConfig.ema_decay,
          lr_step: int = TrainConfig.lr_step, lr_gamma: float = TrainConfig.lr_gamma,
          unroll: int = TrainConfig.unroll, lag: int = TrainConfig.lag,
          ce_weight: float = TrainConfig.ce_weight, level_bias: float = TrainConfig.level_bias,
          num_levels: int = TrainConfig.num_levels, val_fraction: float = TrainConfig.val_fraction,
          val_every: int = TrainConfig.val_every, checkpoint_every: int = TrainConfig.checkpoint_every,
          seed: int = TrainConfig.seed, bf16: bool = TrainConfig.bf16, resume: bool = False,
          overwrite: bool = False, device: str | torch.device | None = None,
          quiet: bool = False) -> Path:
    """Train `model` on the solver store `data` into the bundle directory `out`; returns `out`.

    Several models share one bundle: train each kind once into the same `out`.

    model: "emulator", "refiner" or "thermalizer"
    data: solver store (*.zarr) to train on
    out: bundle directory, created if missing
    resume: continue a killed training from its last checkpoint (default False)
    overwrite: train anew a model the bundle already has (default False)
    device: "cpu", "cuda" or "cuda:N"; by default cuda:LOCAL_RANK when CUDA is available, else
        cpu (default None)
    quiet: no progress bar (default False)
    Hyper-parameters:
    """
    from sns_engine.train.loop import train as _train

    cfg = TrainConfig(**{k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__})
    check_device(device)
    return _train(cfg, data, out, resume=resume, overwrite=overwrite, quiet=quiet, device=device)


def calibrate(bundle: str | Path, data: str | Path, *, samples: int = 32,
              free_steps: tuple[int, ...] = (1, 10, 100, 1000), seed: int = 0, save: bool = True,
              quiet: bool = False) -> dict[str, Any]:
    """How well the refiner's level heads read known noise levels (sns_engine.calibration): median
    and 10–90 % range of the estimates on held-out frames noised to k = 0 … 1000, and on free
    emulator proposals; whether every k in 3..200 is resolved within max(2, 25 %).

    bundle: bundle directory with an emulator and a refiner
    data: the solver store (*.zarr) the bundle was trained on; its held-out trajectories are used
    samples: held-out frames (default 32)
    free_steps: free emulator steps at which the heads read its proposals (default (1, 10, 100, 1000))
    seed: draw of the frames and the noise (default 0)
    save: record the result in the bundle's config.json (default True)
    quiet: no progress bars (default False)
    """
    from sns_engine.calibration import calibrate as _calibrate

    for name, value in (("samples", samples), ("seed", seed)):
        check_type(name, value, int)
    return _calibrate(bundle, data, samples=samples, free_steps=free_steps, seed=seed, save=save,
                      quiet=quiet)


def evaluate(ensemble: str | Path, reference: str | Path, *, windows: int = 4, threshold: float = 1.0,
             max_lag: int = 20, sample: int = 64) -> dict[str, Any]:
    """Metrics of an ensemble store against a solver store, as a JSON-able dict:
    spectrum errors, W1 distances and flagged share per time window, stability, autocorrelation.

    ensemble: ensemble store (*.zarr) of a rollout
    reference: solver store (*.zarr) of the same system, grid and channels
    windows: time windows the metrics are reported for (default 4)
    threshold: spectrum error beyond which a member counts as unstable (default 1.0)
    max_lag: largest autocorrelation lag, in saved steps (default 20)
    sample: most reference snapshots read per trajectory, bounding memory and time (default 64)
    """
    from sns_engine.diagnostics.evaluate import evaluate as _evaluate

    return _evaluate(ensemble, reference, windows=windows, threshold=threshold, max_lag=max_lag,
                     sample=sample)
