"""One `rollout` call as each of its processes runs it: the checked settings (`Job`), what they load
and check against the bundle (`Setup`, `prepare`), the ensemble store, and the packed engine's run
of one shard of the members (`roll`), in this process or in a worker of `rollout(processes=N)`
(`worker_part`). `sns_engine.api.rollout` checks the arguments and chooses the split.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sns_engine.config import ConfigError, RolloutConfig

if TYPE_CHECKING:
    import torch

    from sns_engine.bundle import Bundle
    from sns_engine.data.store import SystemSpec, TrajectoryStore
    from sns_engine.engine.denoiser import Denoiser
    from sns_engine.engine.rollout import RolloutResult
    from sns_engine.engine.shard import Shard


@dataclasses.dataclass(frozen=True)
class Job:
    """A rollout call's settings once checked, as every process of it needs them: what the workers
    of `rollout(processes=N)` receive (then with the bundle as its directory: it pickles)."""

    bundle: str | Path | Bundle
    batch: int
    cfg: RolloutConfig
    initial: torch.Tensor | str | Path | None
    perturb: float | None
    out: str | Path | None
    device: torch.device
    backend: str
    graphs: bool
    bf16: bool
    resume: bool
    overwrite: bool
    checkpoint_every: int
    member_offset: int
    quiet: bool
    workers: int  # threads each step's network calls split their members over (engine.parallel)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every process of a rollout derives from its Job: the bundle, the settings with the
    bundle's defaults, the networks (`model`: the path's denoiser, if any) and every member's id
    and normalised initial state (on the CPU)."""

    job: Job
    bundle: Bundle
    cfg: RolloutConfig
    model: str | None
    emulator: torch.nn.Module
    denoiser: Denoiser | None
    everyone: torch.Tensor
    x0: torch.Tensor


def prepare(job: Job) -> Setup:
    """Load the bundle and check the settings against it (ConfigError before any rollout work)."""
    import torch

    from sns_engine.bundle import Bundle, load_bundle
    from sns_engine.diffusion.paths import get_path
    from sns_engine.engine.denoiser import refiner_denoiser, thermalizer_denoiser
    from sns_engine.engine.initial import initial_conditions
    from sns_engine.engine.rules import with_activation

    bundle = job.bundle
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=job.device)
    cfg = with_activation(job.cfg, bundle.activation)
    if cfg.long == "lagged" and cfg.lag is None:  # the lag the refiner was trained with
        trained = bundle.config["models"].get("refiner", {}).get("train", {}).get("lag")
        if trained is None:
            raise ConfigError("long='lagged' needs lag=: the bundle records no refiner training lag")
        cfg = dataclasses.replace(cfg, lag=trained)
    top = bundle.schedule.num_levels
    for name in ("level_floor", "level_floor_y"):
        if getattr(cfg, name) > top:
            raise ConfigError(f"{name}={getattr(cfg, name)} is above the bundle's top level N={top}")
    if job.out is None:
        _check_memory(job.batch, cfg.steps // cfg.save_every, bundle.system)
    emulator = bundle.model("emulator")
    model = get_path(cfg.path).model
    denoiser = None
    if model == "refiner":
        denoiser = refiner_denoiser(bundle.model("refiner"), job.backend)
    elif model == "thermalizer":
        denoiser = thermalizer_denoiser(bundle.model("thermalizer"), job.backend)
    everyone = torch.arange(job.member_offset, job.member_offset + job.batch)
    x0 = initial_conditions(bundle, job.batch, job.initial, everyone, cfg.seed, job.perturb)
    return Setup(job, bundle, cfg, model, emulator, denoiser, everyone, x0)


def announce(setup: Setup) -> None:
    """Say, once the rollout starts, which path it walks and whom it refines (refiner paths)."""
    from sns_engine.engine.rules import describe_activation

    if setup.model == "refiner":
        print(f"sns_engine: path {setup.cfg.path}, {describe_activation(setup.cfg)}", file=sys.stderr)


def open_store(setup: Setup, chunk: int, may_exist: bool, overwrite: bool) -> TrajectoryStore:
    """The rollout's ensemble store, per-member arrays in chunks of `chunk` members: created (or,
    `may_exist`, checked and reopened; `overwrite`: replaced)."""
    from sns_engine.engine import writer as ensemble_writer
    from sns_engine.engine.initial import perturbation

    job = setup.job
    files = setup.bundle.checksums(["emulator", *([setup.model] if setup.denoiser is not None else [])],
                                   initial=job.initial is None)
    return ensemble_writer.create_ensemble_store(
        job.out, setup.bundle.system, setup.bundle.normalisation, setup.cfg, setup.everyone.tolist(),
        time_chunk=16, resume=may_exist, overwrite=overwrite, member_chunk=chunk,
        perturb=perturbation(job.initial, job.perturb),
        bundle={"name": Path(setup.bundle.path).name, "files": files})


def roll(setup: Setup, shard: Shard, store_made: bool) -> RolloutResult:
    """The packed engine's rollout of `shard`'s members, in memory or into the job's store, which
    `shard`'s rank 0 creates unless `store_made`. Rank 0 alone shows the progress bar."""
    import torch

    from sns_engine.engine import writer as ensemble_writer
    from sns_engine.engine.rollout import Engine, RolloutResult, drive

    job, cfg = setup.job, setup.cfg
    members = setup.everyone[shard.rows]
    eng = Engine(setup.emulator, setup.denoiser, setup.bundle.schedule, setup.x0[shard.rows].to(job.device),
                 cfg, members=members.to(job.device), backend=job.backend, graphs=job.graphs,
                 bf16=job.bf16, workers=job.workers)
    watch = _heads_watch(setup.bundle.config.get("calibration")) if setup.model == "refiner" else None
    quiet = job.quiet or shard.rank != 0
    if job.out is None:
        if not quiet:
            announce(setup)
        with eng:  # its worker threads live for the steps
            states, levels, moves = drive(eng, cfg.steps, cfg.save_every, quiet=quiet, on_step=watch)
        saved = (torch.stack(states, dim=1) * setup.bundle.scale if states
                 else torch.zeros(len(members), 0, *setup.x0.shape[1:]))
        return RolloutResult(saved, None, eng.flags.cpu(), eng.flagged_at.cpu(),
                             torch.stack(levels, 1), torch.stack(moves, 1), eng.stats)

    creates = shard.rank == 0 and not store_made
    store = open_store(setup, shard.chunk, job.resume, job.overwrite) if creates else None
    shard.barrier()  # rank 0 has created (or checked) the store
    store = store or open_store(setup, shard.chunk, True, False)
    if job.resume:
        saved_state = ensemble_writer.load_checkpoint(store, shard.rank)
        if saved_state is not None:
            eng.load_state(*saved_state)
    writer = ensemble_writer.EnsembleWriter(store, setup.bundle.scale, cfg.save_every, eng.next_step,
                                            shard.rows, initial=eng.x)
    if not quiet:  # once the store is there: a store that cannot be made is the only line
        announce(setup)
    with eng:
        drive(eng, cfg.steps, cfg.save_every, writer=writer,
              checkpoint=lambda step: ensemble_writer.save_checkpoint(store, eng.state_tensors(), step,
                                                                      shard.rank),
              checkpoint_every=job.checkpoint_every, quiet=quiet, on_step=watch)
    writer.close(eng.flags, eng.flagged_at)
    shard.barrier()
    return RolloutResult(None, str(store.path), eng.flags.cpu(), eng.flagged_at.cpu(),
                         torch.from_numpy(store.per_step("levels", shard.rows)).long(),
                         torch.from_numpy(store.per_step("moves", shard.rows)).long(), eng.stats)


def worker_part(job: Job, rank: int, world: int) -> RolloutResult:
    """Worker `rank` of `world` of `rollout(processes=world)`: its share, into the parent's store."""
    from sns_engine.engine.shard import Shard

    return roll(prepare(job), Shard.local(job.batch, rank, world), store_made=True)


def _heads_watch(calibration: dict[str, Any] | None):
    """An `on_step` for `drive` that warns once, at the first refined step, when the heads' estimates
    sit far above the bundle's calibration (engine.rules.far_above_calibration)."""
    import warnings

    from sns_engine.engine.rules import far_above_calibration

    pending = [True]

    def watch(levels: torch.Tensor, moves: torch.Tensor) -> None:
        if pending and (levels[:, 0] >= 0).any():
            pending.clear()
            message = far_above_calibration(levels.cpu(), calibration)
            if message:
                warnings.warn(message, UserWarning, stacklevel=4)

    return watch


def _check_memory(batch: int, saves: int, system: SystemSpec) -> None:
    """Refuse an in-memory result larger than this machine's memory: `batch` × `saves` float32
    states of the `system`'s shape, held twice while they are stacked."""
    need = 2 * 4 * batch * saves * system.channels * system.grid ** 2
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise ConfigError(f"the in-memory result needs about {need / 1e9:.1f} GB ({batch} members × "
                          f"{saves} saved states, twice while stacked), more than this machine's "
                          f"{have / 1e9:.1f} GB; pass out= to stream the states to a Zarr store")
