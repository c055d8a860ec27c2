"""The public functions of sns_engine (re-exported by the package): rollout, load_bundle,
generate_data, train, calibrate, evaluate.

Each checks its arguments before any work and raises a ValueError naming the bad one (a TypeError
too for a wrong type); long calls show a progress bar unless `quiet=True`. Each imports its
machinery on first use, so `import sns_engine` stays cheap. No function changes the objects it is
handed (a loaded Bundle stays as it was), and the backend of the fused ops is chosen per call,
the torch threads too (sns_engine.threads, as the CLI; the caller's setting is restored).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sns_engine import config
from sns_engine.config import ConfigError, RolloutConfig, TrainConfig, check_device, check_type
from sns_engine.threads import default_workers, with_torch_threads

if TYPE_CHECKING:
    import torch

    from sns_engine.bundle import Bundle
    from sns_engine.data.store import TrajectoryStore
    from sns_engine.engine.rollout import RolloutResult

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"


@with_torch_threads
@config.document(RolloutConfig)
def rollout(bundle: str | Path | Bundle | None = None, *, batch: int = 8, steps: int = 10,
            path: str = RolloutConfig.path, initial: torch.Tensor | str | Path | None = None,
            perturb: float | None = None, save_every: int = RolloutConfig.save_every,
            out: str | Path | None = None, device: str | torch.device | None = None,
            seed: int = RolloutConfig.seed, threshold: int | None = RolloutConfig.threshold,
            threshold_heads: str | None = RolloutConfig.threshold_heads,
            renoise: bool = RolloutConfig.renoise, bound: float = RolloutConfig.bound,
            noise_limit: int = RolloutConfig.noise_limit,
            thermalizer_start: int = RolloutConfig.thermalizer_start,
            thermalizer_stop: int = RolloutConfig.thermalizer_stop,
            level_floor: int = RolloutConfig.level_floor,
            level_floor_y: int = RolloutConfig.level_floor_y, every: int = RolloutConfig.every,
            long: str = RolloutConfig.long, lag: int | None = RolloutConfig.lag,
            walk: str = RolloutConfig.walk, engine: str = "engine", backend: str = "auto",
            graphs: bool = True, bf16: bool = False,
            resume: bool = False, overwrite: bool = False, checkpoint_every: int | None = None,
            member_offset: int = 0, quiet: bool = False, threads: int | None = None,
            processes: int = 1) -> RolloutResult:
    """Roll out an ensemble of `batch` members for `steps` physical steps along `path`.

    With `out` the states stream into a Zarr ensemble store (resumable); without it they are
    returned in memory (`RolloutResult.states`, physical units). Every argument is checked before
    any work starts: a bad one raises a ValueError naming it (ConfigError, also a TypeError for a
    wrong type). A progress bar shows unless `quiet=True`.

    bundle: bundle directory or a loaded Bundle; None for the embedded default (small Kolmogorov
        64² emulator, refiner and Thermalizer) (default None)
    batch: ensemble members (default 8)
    path: traversal path in the (n_x, n_y) plane (sns_engine.diffusion.paths): left_down (SNS
        path A), fix_short (SNS, y held at its level), down_left, diagonal, gencast (clean y),
        acdm (ACDM), generate, thermalizer (Thermalizer) or emulator (no refinement)
        (default 'left_down')
    initial: initial states: one per member (batch, C, H, W) in physical units, a store path whose
        trajectories' last snapshots the members cycle through, or None for the bundle's shipped
        snapshots, cycled (default None)
    perturb: relative RMS amplitude of the smooth perturbation of each member's initial state,
        keyed by (seed, member id), so no two members start alike; by default PERTURB (1e-3) on
        cycled states and 0 on given ones (default None)
    out: ensemble store (*.zarr) to stream the states into; None keeps them in memory (default None)
    device: "cpu", "cuda" or "cuda:N"; by default cuda:LOCAL_RANK when CUDA is available, else
        cpu (default None)
    engine: "engine" (packed, batched) or "reference" (the per-member oracle; in memory only)
        (default 'engine')
    backend: fused-op implementation: "auto", "torch", "triton" or "cuda"; auto takes the CUDA
        extension if built, else Triton on a GPU, else torch (default 'auto')
    graphs: replay the network calls as CUDA graphs (CUDA only) (default True)
    bf16: bfloat16 network forwards on a GPU; a CPU rollout stays float32 (CPU bf16 autocast ran
        ≈ 50× slower than the fp32 fast path, bench/README.md) (default False)
    resume: continue the rollout in `out` from its last checkpoint (default False)
    overwrite: replace the ensemble store at `out` (default False)
    checkpoint_every: physical steps between resume checkpoints, a multiple of `save_every`; by
        default the first multiple at or above 50 (default None)
    member_offset: id of the first member; a member's noise is keyed by its id (default 0)
    quiet: no progress bar (default False)
    threads: the cores this call computes on: on the CPU each step's network calls split their
        members over `threads` worker threads of one torch thread each, or run in this thread
        while other processes leave it one free core (engine/parallel.py; the results do not
        depend on the load, nor on `threads` where the U-Net's fast path is batch-invariant,
        ops.row_linear; elsewhere only in float rounding, which can flip a near-tied head
        reading); the rest of the call, and a GPU rollout, runs `threads` torch threads
        (the caller's setting restored after it). None: for the steps every core this process
        may use, shared among the node's ranks; for the rest one torch thread per process on a
        machine of ≤ 2 cores, else as the steps (default None)
    processes: worker processes a CPU rollout splits its members over, each on one thread, as
        torchrun's ranks (sns_engine/engine/processes.py; the results do not depend on it, a
        as threads=): a batch that splits in chunks, threads= at
        most 1, no torchrun, no GPU, not the reference engine; a store is resumed with as many. A
        script that passes it calls rollout under `if __name__ == "__main__":` (the workers are
        spawned). 1: this process only (default 1)
    Rollout settings:
    """
    check_type("batch", batch, int)
    config.check_paths(bundle=bundle, out=out, initial=initial)
    check_type("member_offset", member_offset, int)
    if batch <= 0:
        raise ConfigError(f"batch must be positive, got {batch}")
    if engine not in ("engine", "reference"):
        raise ConfigError(f"engine must be 'engine' or 'reference', got {engine!r}")
    for name, value in (("resume", resume), ("overwrite", overwrite), ("checkpoint_every", checkpoint_every)):
        if out is None and value not in (None, False):
            raise ConfigError(f"{name}={value!r} applies to a store; pass out= too, or drop {name}=")
    if engine == "reference" and out is not None:
        raise ConfigError("engine='reference' keeps results in memory; drop out=")
    cfg = RolloutConfig(**{k: v for k, v in locals().items() if k in RolloutConfig.__dataclass_fields__})
    if checkpoint_every is None:
        checkpoint_every = save_every * -(-50 // save_every)
    check_type("checkpoint_every", checkpoint_every, int)
    if checkpoint_every <= 0 or checkpoint_every % save_every:
        raise ConfigError(f"checkpoint_every={checkpoint_every} must be a positive multiple of "
                          f"save_every={save_every}, so a resumed run continues on a saved step")
    check_device(device)
    import torch

    from sns_engine.engine import job as calls
    from sns_engine.engine import processes as local
    from sns_engine.engine.denoiser import CounterNoise
    from sns_engine.engine.reference import reference_rollout
    from sns_engine.engine.rollout import member_flops
    from sns_engine.engine.shard import Shard
    from sns_engine.ops.dispatch import resolve_backend

    local.check(processes, batch, engine, threads)
    shard = Shard.from_env(batch) if processes == 1 else Shard.local(batch, 0, processes)
    if device is None:
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if processes > 1 and device.type != "cpu":
        raise ConfigError(f"processes={processes} splits a CPU rollout, not one on {device}; pass "
                          "device='cpu', or processes=1 on a GPU")
    job = calls.Job(DEFAULT_BUNDLE if bundle is None else bundle, batch, cfg, initial, perturb, out,
                    device, resolve_backend(backend, device), graphs, bf16, resume, overwrite,
                    checkpoint_every, member_offset, quiet,
                    default_workers() if threads is None else threads)
    setup = calls.prepare(job)
    if processes > 1:  # the parent does what torchrun's rank 0 does first, then gathers the shares
        if out is not None:
            calls.open_store(setup, shard.chunk, resume, overwrite)
        part = functools.partial(calls.worker_part,
                                 dataclasses.replace(job, bundle=Path(setup.bundle.path), workers=1))
        parts = local.run(part, processes, setup.everyone.tolist(), keep_going=out is not None)
        return local.gathered(parts, member_flops(setup.emulator, setup.denoiser))
    if engine == "reference":
        if not quiet:
            calls.announce(setup)
        result = reference_rollout(functools.partial(setup.emulator, backend=job.backend),
                                   setup.denoiser, setup.bundle.schedule, setup.x0[shard.rows].to(device),
                                   setup.cfg, CounterNoise(seed), setup.everyone[shard.rows].to(device))
        return dataclasses.replace(result, states=result.states * setup.bundle.scale.to(result.states.device))
    return calls.roll(setup, shard, store_made=False)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a checkpoint bundle: its models (eval mode, EMA weights), schedule and initial states.

    path: the bundle directory (config.json and one .safetensors file per model)
    device: where the models and initial states go: "cpu", "cuda" or "cuda:N" (default 'cpu')
    """
    from sns_engine.bundle import load_bundle as _load

    config.check_path("path", path)
    check_device(device)
    return _load(path, device)


@with_torch_threads
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
    from sns_engine.generation import generate
    from sns_engine.systems import get_system

    for name, value in (("trajectories", trajectories), ("snapshots", snapshots), ("seed", seed),
                        ("trajectory_batch", trajectory_batch), ("time_chunk", time_chunk)):
        check_type(name, value, int)
    config.check_seed("seed", seed)
    config.check_path("out", out)
    overrides = dict(overrides or {})
    config.check_types(type(get_system(system, preset).params), overrides)
    return generate(get_system(system, preset, **overrides), out, trajectories, snapshots, seed=seed,
                    trajectory_batch=trajectory_batch, time_chunk=time_chunk, overwrite=overwrite,
                    quiet=quiet)


@with_torch_threads
@config.document(TrainConfig)
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
          init_from: str | Path | None = None, walk_probe: bool = True, quiet: bool = False) -> Path:
    """Train `model` on the solver store `data` into the bundle directory `out`; returns `out`.

    Several models share one bundle: train each kind once into the same `out`.

    model: "emulator", "refiner" or "thermalizer"
    data: solver store (*.zarr) to train on
    out: bundle directory, created if missing
    resume: continue a killed training from its last checkpoint (default False)
    overwrite: train anew a model the bundle already has (default False)
    device: "cpu", "cuda" or "cuda:N"; by default cuda:LOCAL_RANK when CUDA is available, else
        cpu (default None)
    init_from: a bundle directory whose model of this kind the run starts from, at its step
        count, to train it longer: `steps` is then the total (fresh optimizer moments; default None)
    walk_probe: a refiner records, at every validation, the walk bias of 16 validation frames
        walked back from level 10 and its x head's reading of them at levels 0, 2 and 10
        (sns_engine.walk_bias.training_probe; a few seconds) in its training history (default True)
    quiet: no progress bar (default False)
    Hyper-parameters:
    """
    from sns_engine.train.loop import train as _train
    from sns_engine.walk_bias import training_probe

    cfg = TrainConfig(**{k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__})
    check_device(device)
    config.check_paths(data=data, out=out)
    if init_from is not None:
        config.check_paths(init_from=init_from)
    check_type("walk_probe", walk_probe, bool)
    probe = training_probe() if walk_probe and model == "refiner" else None
    return _train(cfg, data, out, resume=resume, overwrite=overwrite, quiet=quiet, device=device,
                  probe=probe, init_from=init_from)


@with_torch_threads
def calibrate(bundle: str | Path | None, data: str | Path, *, samples: int = 32,
              free_steps: tuple[int, ...] = (1, 10, 100, 1000), seed: int = 0, save: bool = True,
              out: str | Path | None = None, walk_bias: bool = True, walk_bias_frames: int = 16,
              climatology: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """How well the refiner's level heads read known noise levels (sns_engine.calibration): median
    and 10–90 % range of the estimates on held-out frames noised to k = 0 … 1000, and on free
    emulator proposals; whether every k in 3..200 is resolved within max(2, 25 %). With
    `walk_bias`, also how much one walk from k = 1 … 40 changes the kinetic energy and spectrum
    of the frames it walks (sns_engine.walk_bias; under "walk_bias"). With `climatology`, also the
    solver's mean resolved spectrum and kinetic energy (under "climatology"), which `sns-engine
    compare` measures ensembles against when no solver store is at hand.

    The result is stored in the bundle's config.json, or in a copy of the bundle at `out`. The
    embedded default bundle is part of the installed package and is never changed: calibrate it
    with `out` (or save=False).

    bundle: bundle directory with an emulator and a refiner; None for the embedded default
    data: the solver store (*.zarr) the bundle was trained on; its held-out trajectories are used
    samples: held-out frames (default 32)
    free_steps: free emulator steps at which the heads read its proposals (default (1, 10, 100, 1000))
    seed: draw of the frames and the noise (default 0)
    save: record the result in the bundle's config.json, or in the copy at `out` (default True)
    out: a new (or empty) directory to write a copy of the bundle with the calibration into,
        leaving `bundle` as it is (default None: write into `bundle`)
    walk_bias: measure the walk bias too (default True)
    walk_bias_frames: held-out frames per level of the walk bias, each walked twice (antithetic
        noise); cost 16 · 78 · frames refiner forwards, ≈ 5 CPU-minutes at 16 for the small
        preset at 64² on one core (default 16)
    climatology: a solver store (*.zarr) of the bundle's system sampling its attractor (a long
        spin-up: the training data's may still be settling) whose climatology to record
        (sns_engine.diagnostics.climatology; default None: none)
    quiet: no progress bars (default False)
    """
    from sns_engine import calibration
    from sns_engine.walk_bias import walk_bias as _walk_bias

    for name, value, kind in (("samples", samples, int), ("save", save, bool),
                              ("walk_bias", walk_bias, bool), ("walk_bias_frames", walk_bias_frames, int)):
        check_type(name, value, kind)
    config.check_seed("seed", seed)
    if walk_bias and walk_bias_frames < 2:
        raise ConfigError(f"walk_bias_frames must be ≥ 2, got {walk_bias_frames}")
    bundle = DEFAULT_BUNDLE if bundle is None else bundle
    if save:
        calibration.check_target(bundle, out)
    config.check_paths(climatology=climatology)
    climate = None if climatology is None else calibration.climatology_of(bundle, climatology)
    result = calibration.calibrate(bundle, data, samples=samples, free_steps=free_steps, seed=seed,
                                   save=False, quiet=quiet)
    if walk_bias:
        result["walk_bias"] = _walk_bias(bundle, data, frames=walk_bias_frames, seed=seed,
                                         quiet=quiet)
    if climate is not None:
        result["climatology"] = climate
    if save:
        calibration.record(bundle, result, out)
    return result


@with_torch_threads
def evaluate(ensemble: str | Path, reference: str | Path, *, windows: int = 4, threshold: float = 1.0,
             max_lag: int = 20, sample: int = 64, partial: bool = False) -> dict[str, Any]:
    """Metrics of an ensemble store against a solver store, as a JSON-able dict:
    spectrum errors, W1 distances and flagged share per time window, stability, autocorrelation.

    An unfinished ensemble store (its rollout killed, failed or still running) is refused, saying
    how many steps it has of how many; `partial=True` evaluates the steps it has.

    ensemble: ensemble store (*.zarr) of a rollout
    reference: solver store (*.zarr) of the same system, grid and channels
    windows: time windows the metrics are reported for (default 4)
    threshold: spectrum error beyond which a member counts as unstable (default 1.0)
    max_lag: largest autocorrelation lag, in saved steps (default 20)
    sample: most reference snapshots read per trajectory, bounding memory and time (default 64)
    partial: evaluate the steps an unfinished ensemble store has written (default False)
    """
    from sns_engine.diagnostics.evaluate import evaluate as _evaluate

    check_type("partial", partial, bool)
    config.check_paths(ensemble=ensemble, reference=reference)
    return _evaluate(ensemble, reference, windows=windows, threshold=threshold, max_lag=max_lag,
                     sample=sample, partial=partial)
