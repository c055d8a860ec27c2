"""The user-level rollout: bundle + initial conditions → engine (or reference) → memory or Zarr."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sns_engine.bundle import Bundle, load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.diffusion.paths import get_path
from sns_engine.engine import writer as ensemble_writer
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import Engine, RolloutResult, drive
from sns_engine.ops.dispatch import resolve_backend

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "default_bundle"


def with_activation(cfg: RolloutConfig, bundle: Bundle) -> RolloutConfig:
    """`cfg` with an unset activation threshold / heads taken from the bundle's system default
    (Kolmogorov: every member every step; QG: either head at level ≥ 7, as the authors run it)."""
    return dataclasses.replace(
        cfg, threshold=bundle.activation["threshold"] if cfg.threshold is None else cfg.threshold,
        threshold_heads=cfg.threshold_heads or bundle.activation["threshold_heads"])


def describe_activation(cfg: RolloutConfig) -> str:
    """One line saying which members the rollout refines."""
    if cfg.threshold == 0:
        return "refining every member every step"
    head = "n̂_x" if cfg.threshold_heads == "x" else "max(n̂_x, n̂_y)"
    return f"refining members with {head} ≥ {cfg.threshold}"


def initial_conditions(bundle: Bundle, batch: int, initial: torch.Tensor | None,
                       members: torch.Tensor) -> torch.Tensor:
    """Normalised initial states (B, C, H, W): given ones (physical units), or the bundle's shipped
    snapshots, member i starting from snapshot i mod K."""
    c, g = bundle.system["channels"], bundle.system["grid"]
    if initial is not None:
        initial = torch.as_tensor(initial, dtype=torch.float32)
        if initial.ndim != 4 or tuple(initial.shape[1:]) != (c, g, g) or initial.shape[0] != batch:
            raise ValueError(f"initial must have shape ({batch}, {c}, {g}, {g}) for this bundle, got "
                             f"{tuple(initial.shape)}")
        if not torch.isfinite(initial).all():
            raise ValueError("initial holds NaN/Inf values; pass finite states")
        return initial / bundle.scale
    if bundle.initial is None:
        raise ValueError(f"bundle {bundle.path} ships no initial conditions; pass initial=...")
    return bundle.initial.cpu()[members % bundle.initial.shape[0]]


def rollout(bundle: str | Path | Bundle | None = None, *, batch: int = 8, steps: int = 10,
            path: str = "left_down", initial: torch.Tensor | None = None, save_every: int = 1,
            out: str | Path | None = None, device: str | None = None, seed: int = 0,
            engine: str = "engine", backend: str = "auto", graphs: bool = True, bf16: bool = False,
            resume: bool = False, overwrite: bool = False, checkpoint_every: int | None = None,
            member_offset: int = 0, quiet: bool = True, **settings) -> RolloutResult:
    """Roll out an ensemble of `batch` members for `steps` physical steps along `path`.

    `bundle=None` uses the embedded default (small Kolmogorov 64² emulator + refiner). `settings`
    are further RolloutConfig fields (threshold, renoise, bound, thermalizer_start, ...). With
    `out` the states stream into a Zarr ensemble store (resumable with `resume=True`); without it
    they are returned in memory. `engine="reference"` runs the per-member oracle instead.
    `member_offset` numbers the members from there (their noise is keyed by that id).
    `checkpoint_every` (steps between resume points, a multiple of `save_every`) defaults to the
    first multiple of `save_every` at or above 50.
    """
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if engine not in ("engine", "reference"):
        raise ValueError(f"engine must be 'engine' or 'reference', got {engine!r}")
    cfg = RolloutConfig(path=path, steps=steps, seed=seed, save_every=save_every, **settings)
    if checkpoint_every is None:
        checkpoint_every = save_every * -(-50 // save_every)
    if checkpoint_every % save_every:
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of save_every "
                         f"({save_every}) so a resumed run continues on a saved step")
    get_path(path)
    shard = Shard.from_env(batch)
    if device is None:
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(DEFAULT_BUNDLE if bundle is None else bundle, device=device)
    cfg = with_activation(cfg, bundle)
    if not quiet and get_path(path).model == "refiner":
        print(f"sns_engine: path {path}, {describe_activation(cfg)}", file=sys.stderr)
    backend = resolve_backend(backend, device)
    if backend != "torch":  # fused Triton conv blocks in every U-Net (weights unchanged)
        for model_ in bundle.models.values():
            model_.unet.set_backend("triton")
    emulator = bundle.model("emulator")
    model = get_path(path).model
    denoiser = None
    if model == "refiner":
        denoiser = refiner_denoiser(bundle.model("refiner"))
    elif model == "thermalizer":
        denoiser = thermalizer_denoiser(bundle.model("thermalizer"))
    everyone = torch.arange(member_offset, member_offset + batch)
    members = everyone[shard.rows]
    x0 = initial_conditions(bundle, batch, initial, everyone)[shard.rows].to(device)

    if engine == "reference":
        if out is not None:
            raise ValueError("engine='reference' keeps results in memory; drop out=")
        record = reference_rollout(emulator, denoiser, bundle.schedule, x0, cfg,
                                   CounterNoise(seed), members.to(device))
        scale = bundle.scale.to(record.states.device)
        return RolloutResult(record.states * scale, None, record.flags, record.flagged_at,
                             record.levels, record.moves)

    eng = Engine(emulator, denoiser, bundle.schedule, x0, cfg, members=members.to(device),
                 backend=backend, graphs=graphs, bf16=bf16)
    if out is None:
        states, levels, moves = drive(eng, steps, save_every, quiet=quiet)
        scale = bundle.scale
        saved = (torch.stack(states, dim=1) * scale if states
                 else torch.zeros(len(members), 0, *x0.shape[1:]))
        return RolloutResult(saved, None, eng.flags.cpu(), eng.flagged_at.cpu(),
                             torch.stack(levels, 1), torch.stack(moves, 1), eng.stats)

    def open_store(may_exist: bool):
        return ensemble_writer.create_ensemble_store(
            out, bundle.system, bundle.normalisation, cfg, batch, time_chunk=16, resume=may_exist,
            overwrite=overwrite and shard.rank == 0, member_chunk=shard.chunk)

    store = open_store(resume) if shard.rank == 0 else None
    shard.barrier()  # rank 0 has created (or checked) the store
    store = store or open_store(True)
    if resume:
        saved_state = ensemble_writer.load_checkpoint(store, shard.rank)
        if saved_state is not None:
            eng.load_state(*saved_state)
    writer = ensemble_writer.EnsembleWriter(store, bundle.scale, save_every, eng.next_step, shard.rows)
    drive(eng, steps, save_every, writer=writer, checkpoint=lambda step: ensemble_writer.save_checkpoint(
        store, eng.state_tensors(), step, shard.rank), checkpoint_every=checkpoint_every, quiet=quiet)
    writer.close(eng.flags, eng.flagged_at)
    shard.barrier()
    root = store.root
    return RolloutResult(None, str(store.path), eng.flags.cpu(), eng.flagged_at.cpu(),
                         torch.from_numpy(root["levels"][shard.rows]).long(),
                         torch.from_numpy(root["moves"][shard.rows]).long(), eng.stats)


@dataclass(frozen=True)
class Shard:
    """This process's share of an ensemble under `torchrun`: a contiguous, chunk-aligned range of
    members. Every rank writes only its own rows (and chunks) of the one ensemble store; with a
    single process the shard is everything. Multi-node works the same way (torchrun --nnodes)."""

    rank: int
    world: int
    local_rank: int
    chunk: int           # members per rank (the last one may have fewer)
    rows: slice

    @classmethod
    def from_env(cls, batch: int) -> Shard:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if world > batch:
            raise ValueError(f"{world} ranks for {batch} members: use at most one rank per member")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        chunk = -(-batch // world)
        if (world - 1) * chunk >= batch:
            raise ValueError(f"{batch} members do not split over {world} ranks in chunks of {chunk}; "
                             f"use a batch that is a multiple of {world}")
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", 0)), chunk,
                   slice(rank * chunk, min((rank + 1) * chunk, batch)))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
