"""The user-level rollout: bundle + initial conditions → engine (or reference) → memory or Zarr."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sns_engine.bundle import Bundle, load_bundle
from sns_engine.config import ConfigError, RolloutConfig, check_device, check_type, document
from sns_engine.data.store import TrajectoryStore, trajectory_seed
from sns_engine.diffusion.paths import get_path
from sns_engine.engine import writer as ensemble_writer
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import Engine, RolloutResult, drive
from sns_engine.ops.dispatch import resolve_backend

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "default_bundle"
PERTURB = 1e-3  # default relative RMS amplitude of the perturbation of cycled initial states
SMOOTH_MODES = 8  # the perturbation holds Fourier modes 0 < |k| ≤ this (in grid wavenumbers)


def with_activation(cfg: RolloutConfig, bundle: Bundle) -> RolloutConfig:
    """`cfg` with an unset activation threshold / heads taken from the bundle's system default
    (Kolmogorov: every member every step; QG: either head at level ≥ 7, as the authors run it)."""
    return dataclasses.replace(
        cfg, threshold=bundle.activation["threshold"] if cfg.threshold is None else cfg.threshold,
        threshold_heads=cfg.threshold_heads or bundle.activation["threshold_heads"])


def describe_activation(cfg: RolloutConfig) -> str:
    """Which members the rollout refines, in words."""
    if cfg.threshold == 0:
        return "refining every member every step"
    head = "n̂_x" if cfg.threshold_heads == "x" else "max(n̂_x, n̂_y)"
    return f"refining members with {head} ≥ {cfg.threshold}"


def announce(cfg: RolloutConfig, quiet: bool) -> None:
    """Say on stderr, as the rollout starts, which path it walks and whom it refines."""
    if not quiet and get_path(cfg.path).model == "refiner":
        print(f"sns_engine: path {cfg.path}, {describe_activation(cfg)}", file=sys.stderr)


def perturbation(initial: torch.Tensor | str | Path | None, perturb: float | None) -> float:
    """The relative perturbation amplitude a rollout uses: `perturb`, or by default PERTURB for
    cycled states (the bundle's or a store's) and 0 for states given one per member."""
    if perturb is None:
        given = initial is not None and not isinstance(initial, (str, os.PathLike))
        return 0.0 if given else PERTURB
    if not 0 <= perturb < float("inf"):
        raise ValueError(f"perturb must be a finite amplitude ≥ 0, got {perturb!r}")
    return float(perturb)


def smooth_noise(seed: int, members: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Random smooth fields (B, C, H, W), zero mean and unit RMS per channel: white noise from a
    generator keyed by (seed, member id) alone, low-passed to 0 < |k| ≤ SMOOTH_MODES."""
    white = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
        trajectory_seed(seed % 2**64, int(m)))) for m in members])
    ky = torch.fft.fftfreq(shape[1], 1 / shape[1])[:, None]
    kx = torch.fft.rfftfreq(shape[2], 1 / shape[2])[None, :]
    keep = ((ky**2 + kx**2 <= SMOOTH_MODES**2) & (ky**2 + kx**2 > 0)).to(torch.complex64)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * keep, s=shape[1:])
    return field / field.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


def initial_conditions(bundle: Bundle, batch: int, initial: torch.Tensor | str | Path | None,
                       members: torch.Tensor, seed: int = 0,
                       perturb: float | None = None) -> torch.Tensor:
    """Normalised initial states (B, C, H, W) of the members with ids `members`.

    `initial` is one state per member (physical units), a solver or ensemble store path whose
    trajectories' last snapshots member i cycles through (i mod K), or None for the bundle's K
    shipped snapshots (i mod K). Every member then gets its state plus `perturbation(initial,
    perturb)` × its per-channel std × `smooth_noise` keyed by (seed, member id), so cycled members
    are distinct, and a member's start depends on neither the batch nor the sharding."""
    c, g = bundle.system["channels"], bundle.system["grid"]
    amplitude = perturbation(initial, perturb)
    if isinstance(initial, (str, os.PathLike)):
        store = TrajectoryStore(initial)
        store.check_complete()
        last = torch.from_numpy(np.asarray(store.fields[:, -1]))
        if tuple(last.shape[1:]) != (c, g, g):
            raise ValueError(f"initial store {initial} holds {tuple(last.shape[1:])} fields; this "
                             f"bundle needs ({c}, {g}, {g})")
        x0 = last[members % last.shape[0]] / bundle.scale
    elif initial is not None:
        initial = torch.as_tensor(initial, dtype=torch.float32).cpu()
        if initial.ndim != 4 or tuple(initial.shape[1:]) != (c, g, g) or initial.shape[0] != batch:
            raise ValueError(f"initial must have shape ({batch}, {c}, {g}, {g}) for this bundle, got "
                             f"{tuple(initial.shape)}")
        x0 = initial / bundle.scale
    elif bundle.initial is None:
        raise ValueError(f"bundle {bundle.path} ships no initial conditions; pass initial=...")
    else:
        x0 = bundle.initial.cpu()[members % bundle.initial.shape[0]]
    if not torch.isfinite(x0).all():
        raise ValueError("initial holds NaN/Inf values; pass finite states")
    if amplitude == 0:
        return x0
    std = x0.std(dim=(-2, -1), keepdim=True)
    return x0 + amplitude * std * smooth_noise(seed, members, (c, g, g))


@document(RolloutConfig)
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
            engine: str = "engine", backend: str = "auto", graphs: bool = True, bf16: bool = False,
            resume: bool = False, overwrite: bool = False, checkpoint_every: int | None = None,
            member_offset: int = 0, quiet: bool = False) -> RolloutResult:
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
    bf16: bfloat16 network forwards (default False)
    resume: continue the rollout in `out` from its last checkpoint (default False)
    overwrite: replace the ensemble store at `out` (default False)
    checkpoint_every: physical steps between resume checkpoints, a multiple of `save_every`; by
        default the first multiple at or above 50 (default None)
    member_offset: id of the first member; a member's noise is keyed by its id (default 0)
    quiet: no progress bar (default False)
    Rollout settings:
    """
    check_type("batch", batch, int)
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
    shard = Shard.from_env(batch)
    if device is None:
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backend = resolve_backend(backend, device)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(DEFAULT_BUNDLE if bundle is None else bundle, device=device)
    cfg = with_activation(cfg, bundle)
    if out is None:
        _check_memory(batch, steps // save_every, bundle.system)
    if backend != "torch":  # fused Triton conv blocks in every U-Net (weights unchanged)
        for model_ in bundle.models.values():
            model_.unet.set_backend("triton")
    emulator = bundle.model("emulator")
    model = get_path(path).model
    denoiser = None
    if model == "refiner":
        denoiser = refiner_denoiser(bundle.model("refiner"), backend)
    elif model == "thermalizer":
        denoiser = thermalizer_denoiser(bundle.model("thermalizer"), backend)
    everyone = torch.arange(member_offset, member_offset + batch)
    members = everyone[shard.rows]
    x0 = initial_conditions(bundle, batch, initial, everyone, seed, perturb)[shard.rows].to(device)

    if engine == "reference":
        announce(cfg, quiet)
        record = reference_rollout(emulator, denoiser, bundle.schedule, x0, cfg,
                                   CounterNoise(seed), members.to(device))
        scale = bundle.scale.to(record.states.device)
        return RolloutResult(record.states * scale, None, record.flags, record.flagged_at,
                             record.levels, record.moves)

    eng = Engine(emulator, denoiser, bundle.schedule, x0, cfg, members=members.to(device),
                 backend=backend, graphs=graphs, bf16=bf16)
    if out is None:
        announce(cfg, quiet)
        states, levels, moves = drive(eng, steps, save_every, quiet=quiet)
        scale = bundle.scale
        saved = (torch.stack(states, dim=1) * scale if states
                 else torch.zeros(len(members), 0, *x0.shape[1:]))
        return RolloutResult(saved, None, eng.flags.cpu(), eng.flagged_at.cpu(),
                             torch.stack(levels, 1), torch.stack(moves, 1), eng.stats)

    def open_store(may_exist: bool):
        return ensemble_writer.create_ensemble_store(
            out, bundle.system, bundle.normalisation, cfg, batch, time_chunk=16, resume=may_exist,
            overwrite=overwrite and shard.rank == 0, member_chunk=shard.chunk,
            perturb=perturbation(initial, perturb))

    store = open_store(resume) if shard.rank == 0 else None
    shard.barrier()  # rank 0 has created (or checked) the store
    store = store or open_store(True)
    if resume:
        saved_state = ensemble_writer.load_checkpoint(store, shard.rank)
        if saved_state is not None:
            eng.load_state(*saved_state)
    writer = ensemble_writer.EnsembleWriter(store, bundle.scale, save_every, eng.next_step, shard.rows)
    announce(cfg, quiet)
    drive(eng, steps, save_every, writer=writer, checkpoint=lambda step: ensemble_writer.save_checkpoint(
        store, eng.state_tensors(), step, shard.rank), checkpoint_every=checkpoint_every, quiet=quiet)
    writer.close(eng.flags, eng.flagged_at)
    shard.barrier()
    root = store.root
    return RolloutResult(None, str(store.path), eng.flags.cpu(), eng.flagged_at.cpu(),
                         torch.from_numpy(root["levels"][shard.rows]).long(),
                         torch.from_numpy(root["moves"][shard.rows]).long(), eng.stats)


def _check_memory(batch: int, saves: int, system: dict) -> None:
    """Refuse an in-memory result larger than this machine's memory: `batch` × `saves` float32
    states of the `system`'s shape, held twice while they are stacked."""
    need = 2 * 4 * batch * saves * system["channels"] * system["grid"] ** 2
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise ConfigError(f"the in-memory result needs about {need / 1e9:.1f} GB ({batch} members × "
                          f"{saves} saved states, twice while stacked), more than this machine's "
                          f"{have / 1e9:.1f} GB; pass out= to stream the states to a Zarr store")


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
