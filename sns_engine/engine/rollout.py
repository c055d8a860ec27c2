"""The ensemble engine: emulator → estimate → packed refinement ticks → write, per physical step.

All per-member state lives on the device in persistent buffers (`MemberBuffers`): states, levels,
the two-phase walk counters, member ids, flags. A physical step:

1. emulator: x̂ = emu(x) for every member (one forward, one graph);
2. estimate: one levels-only refiner pass (encoder, middle, heads) on (long, x, x̂) → (n̂_x, n̂_y)
   by argmax, then the path's plan (a full forward instead when its ε̂ is reused, see 5);
3. re-noise the frames whose start level asks for it (in-place, counter-based noise);
4. pack: sort members by their number of moves (the step's single host sync), so the members still
   walking at tick k are a prefix; copy the sorted state into the tick buffers;
5. ticks: each runs the network on the prefix padded to a bucket size and one fused update
   (`ops.update.ddpm_tick`) that moves x and/or y per member and advances its counters. When no
   frame was re-noised, the estimate forward already holds tick 0's ε̂ and is reused;
6. unpack, flag and freeze members that went non-finite or out of bound, hand the step to the writer.

Steps 2–5 run on the physical steps `every` names (engine.rules); the others keep the proposal.
With long="lagged" the long-lag frames come from a ring buffer of each member's last `lag` states
(`history`, B × lag states: 1.7 GB for 1024 members of 64² at lag 100; part of the checkpoint).

On the CPU every network call runs in chunks of `cpu_chunk` members (`chunked`), so activations
stay in cache, and with `workers` > 1 the chunks run at once on a pool of threads, one torch thread
each (engine.parallel); on a GPU the whole packed batch is one call (one graph).

Results do not depend on batch composition: every random number is keyed by (seed, member id,
physical step, level, stream, pixel), never by slot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from sns_engine.config import RolloutConfig
from sns_engine.diffusion.paths import get_path
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine import profiling
from sns_engine.engine.denoiser import Denoiser
from sns_engine.engine.graphs import Replayer
from sns_engine.engine.parallel import ChunkPool
from sns_engine.engine.rules import (
    NOISE_LIMIT,
    estimate_levels,
    lagged_index,
    refinement,
    refines_at,
    reuses_estimate,
    state_flags,
)
from sns_engine.engine.scheduler import bucket_sizes, schedule_ticks
from sns_engine.files import interrupts_deferred
from sns_engine.memory import keep_freed_memory
from sns_engine.models import unet_cpu
from sns_engine.models.unet import find_unet, forward_flops
from sns_engine.ops import rng
from sns_engine.ops.dispatch import resolve_backend
from sns_engine.ops.update import ddpm_tick, renoise
from sns_engine.threads import torch_threads

CPU_CHUNK = 16  # members per network call on the CPU (see `chunked`)


def chunked(fn, chunk: int, pool: ChunkPool | None = None):
    """`fn` over dim-0 chunks of at most `chunk` rows of its tensor arguments, the outputs (a tensor
    or a NamedTuple of tensors) concatenated in member order. On the CPU a chunk's activations stay
    in cache: the small U-Net at 64² costs ≈ 10 ms per member in chunks of 8–32 and ≈ 16.5 ms in one
    call of 256 (one core). With a `pool` the chunks (`pool.chunk_size`: smaller, so that every
    worker has work) run concurrently. Every member's result is computed as before, only the batch
    is split."""
    def run(*inputs: torch.Tensor):
        rows = inputs[0].shape[0]
        size = chunk if pool is None else pool.chunk_size(rows, chunk)
        if rows <= size:
            return fn(*inputs)
        chunks = list(zip(*(t.split(size) for t in inputs), strict=True))
        parts = [fn(*part) for part in chunks] if pool is None else pool.map(fn, chunks)
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return type(parts[0])(*(torch.cat(column) for column in zip(*parts, strict=True)))

    return run


@dataclass(frozen=True)
class MemberFlops:
    """FLOPs per member of each network pass (0 for a network that is not a U-Net)."""

    emulator: int = 0
    forward: int = 0        # the denoiser's full forward
    levels: int = 0         # its levels-only pass


def member_flops(emulator: object, denoiser: Denoiser | None) -> Callable[[], MemberFlops]:
    """The networks' MemberFlops, counted on the first call (models.unet.forward_flops, whose
    FlopCounterMode costs seconds the first time in a process), then cached."""
    @functools.cache
    def count() -> MemberFlops:
        emu = forward_flops(emulator) if find_unet(emulator) is not None else 0
        if denoiser is None or denoiser.flops is None:
            return MemberFlops(emu)
        return MemberFlops(emu, denoiser.flops("forward"), denoiser.flops("levels"))

    return count


@dataclass
class EngineStats:
    """Work counters over a run: forwards and member-forwards (useful vs padded), and the FLOPs
    they amount to (`flops`, `useful_flops`: member-forwards × FLOPs per member of each pass)."""

    physical_steps: int = 0
    forwards: int = 0                 # full network forwards (emulator, refiner, thermalizer)
    level_passes: int = 0             # levels-only estimates (encoder, middle, heads)
    member_forwards: int = 0
    useful_member_forwards: int = 0
    emulator_member_forwards: int = 0  # the emulator's share of both member-forward counts
    level_pass_members: int = 0        # members of the levels-only passes
    refine_forwards: list[int] = field(default_factory=list)
    per_member: Callable[[], MemberFlops] = field(default=MemberFlops, repr=False, compare=False)

    def count_forward(self, members: int, useful: int, emulator: bool = False) -> None:
        """One full forward of `members` members (padded), `useful` of them useful."""
        self.forwards += 1
        self.member_forwards += members
        self.useful_member_forwards += useful
        self.emulator_member_forwards += members if emulator else 0

    def count_level_pass(self, members: int) -> None:
        """One levels-only pass of `members` members."""
        self.level_passes += 1
        self.level_pass_members += members

    @property
    def flops(self) -> int:
        """FLOPs of every pass run, padding included."""
        return self._flops(self.member_forwards)

    @property
    def useful_flops(self) -> int:
        """FLOPs of the useful member-forwards and the levels-only passes."""
        return self._flops(self.useful_member_forwards)

    def _flops(self, member_forwards: int) -> int:
        per, emulator = self.per_member(), self.emulator_member_forwards
        return (emulator * per.emulator + (member_forwards - emulator) * per.forward
                + self.level_pass_members * per.levels)

    @property
    def useful_fraction(self) -> float:
        return self.useful_member_forwards / max(self.member_forwards, 1)

    @property
    def forwards_per_step(self) -> float:
        return self.forwards / max(self.physical_steps, 1)


class Engine:
    """Rolls a fixed set of members forward, one physical step per `step()` call.

    On the CPU, `workers` > 1 runs each network call's member chunks on that many threads and the
    step on one torch thread (engine.parallel; the torch backend only); `close()` (or leaving a
    `with` block) joins them."""

    def __init__(self, emulator: torch.nn.Module, denoiser: Denoiser | None, schedule: CosineSchedule,
                 initial: torch.Tensor, cfg: RolloutConfig, members: torch.Tensor | None = None,
                 long: torch.Tensor | None = None, backend: str = "auto", graphs: bool = True,
                 bf16: bool = False, buckets_per_octave: int = 16, cpu_chunk: int | None = CPU_CHUNK,
                 workers: int = 1):
        self.path = get_path(cfg.path)
        if self.path.model is not None and denoiser is None:
            raise ValueError(f"path {cfg.path!r} needs a {self.path.model} but none was given")
        self.stats = EngineStats(per_member=member_flops(emulator, denoiser))
        emulator = functools.partial(emulator, backend=backend)  # its fused ops run on ours
        device = initial.device
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        # Triton's CPU interpreter patches triton.language while a kernel runs: one thread at a time
        split = device.type == "cpu" and cpu_chunk and resolve_backend(backend, device) == "torch"
        if device.type == "cpu":
            keep_freed_memory()  # activations reused, not faulted in anew each call (sns_engine.memory)
        self.pool = None
        if split and workers > 1:  # its chunks follow the load where that keeps a member's bits
            self.pool = ChunkPool(workers, regroup=not bf16 and unet_cpu.convs_batch_invariant())
        if device.type == "cpu" and cpu_chunk:
            emulator = chunked(emulator, cpu_chunk, self.pool)
            if denoiser is not None:
                denoiser = Denoiser(*(chunked(fn, cpu_chunk, self.pool) for fn in
                                      (denoiser.forward, denoiser.levels, denoiser.estimate)))
        self.emulator, self.denoiser, self.schedule, self.cfg = emulator, denoiser, schedule, cfg
        self.backend = backend
        b = initial.shape[0]
        self.size = b
        self.x = initial.clone()
        self.long = initial.clone() if long is None else long.to(device).clone()
        self.member = (torch.arange(b) if members is None else members).to(device).long()
        self.flags = torch.zeros(b, dtype=torch.int32, device=device)
        self.flagged_at = torch.full((b,), -1, dtype=torch.long, device=device)
        self.coefs = torch.stack(schedule.step_tables(cfg.walk)).to(
            device=device, dtype=torch.float32).contiguous()
        lagged_index(cfg, 0)  # checks that long="lagged" has its lag
        self.history = (self.x[:, None].repeat(1, cfg.lag, *[1] * (self.x.ndim - 1))
                        if cfg.long == "lagged" else None)  # slot t % lag: the state of step t
        self.next_step = 0
        # persistent buffers: proposal, and the sorted (packed) copies the ticks work on
        self.proposal = torch.empty_like(self.x)
        self.sx, self.sy, self.slong = (torch.empty_like(self.x) for _ in range(3))
        self.sn = torch.zeros(2, b, dtype=torch.int32, device=device)          # n_x, n_y
        self.smoves = torch.zeros(b, 2, dtype=torch.int32, device=device)
        self.scounts = torch.zeros(b, 2, dtype=torch.int32, device=device)
        self.smember = torch.zeros(b, dtype=torch.long, device=device)
        self.sstep = torch.zeros(b, dtype=torch.int32, device=device)
        self.eps = (torch.empty_like(self.x), torch.empty_like(self.x))        # ε̂_x, ε̂_y
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if bf16 and device.type == "cuda" else nullcontext())
        self.buckets = bucket_sizes(b, buckets_per_octave)
        pool = torch.cuda.graph_pool_handle() if graphs and torch.cuda.is_available() else None
        self.run_emulator = Replayer(self._emulate, [self.proposal], graphs, pool)
        tick_buffers = [self.sx, self.sy, self.sn, self.scounts, *self.eps]
        self.run_tick = Replayer(self._tick, tick_buffers, graphs, pool)

    # --------------------------------------------------------------- graph-captured bodies
    def _emulate(self, size: int) -> None:
        with self.autocast:
            self.proposal[:size] = self.emulator(self.x[:size]).float()

    def _tick(self, size: int, reuse: bool = False) -> None:
        if not reuse:
            with self.autocast:
                out = self.denoiser(self.slong[:size], self.sy[:size], self.sx[:size])
            self.eps[0][:size] = out.eps_x
            self.eps[1][:size] = out.eps_y
        ddpm_tick(self.sx[:size], self.sy[:size], self.eps[0][:size], self.eps[1][:size],
                  self.sn[0, :size], self.sn[1, :size], self.smoves[:size], self.scounts[:size],
                  self.smember[:size], self.sstep[:size], self.cfg.seed, self.coefs,
                  backend=self.backend)

    # --------------------------------------------------------------------- one physical step
    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every member one physical step; returns (levels (B, 2), moves (B,)) of it. With
        a pool every op of the step runs on one torch thread (engine.parallel)."""
        with torch_threads(1) if self.pool is not None else nullcontext():
            return self._step()

    def close(self) -> None:
        """Join the pool's threads, if any; the engine takes no step after it."""
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @torch.no_grad()
    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = self.size, self.next_step
        alive = self.flags == 0
        with profiling.range("emulator"):
            self.run_emulator(b)
            self.stats.count_forward(b, b, emulator=True)
        levels = torch.full((b, 2), -1, dtype=torch.long, device=self.x.device)
        moves = torch.zeros(b, dtype=torch.long, device=self.x.device)
        new = self.proposal
        if self.history is not None:  # the state lag steps back (the initial one before that)
            slot = t % self.cfg.lag
            self.long.copy_(self.history[:, slot])
            self.history[:, slot] = self.x
        if self.path.model is not None and refines_at(self.cfg, t):
            new, levels, moves = self._refine(alive, t)
        self._accept(new, alive, t)
        self.next_step += 1
        self.stats.physical_steps += 1
        return levels, moves

    def _refine(self, alive: torch.Tensor, t: int):
        cfg, sched, b = self.cfg, self.schedule, self.size
        reuse = reuses_estimate(self.path, cfg)
        with profiling.range("estimate"), self.autocast:
            if reuse:
                out = self.denoiser(self.long, self.x, self.proposal)
                n_x, n_y = estimate_levels(out)
                self.stats.count_forward(b, b)
            else:
                n_y, n_x = self.denoiser.estimate(self.long, self.x, self.proposal)
                self.stats.count_level_pass(b)
        step_plan = refinement(self.path, n_x, n_y, cfg, sched.num_levels, alive)
        plan, counts = step_plan.plan, step_plan.counts
        y, x = self.x.clone(), self.proposal.clone()
        step = torch.full((b,), t, dtype=torch.int32, device=y.device)
        with profiling.range("refine"):
            for frame, est, start, stream in ((y, n_y, plan.start_y, rng.STREAM_RENOISE_Y),
                                              (x, n_x, plan.start_x, rng.STREAM_RENOISE_X)):
                level = step_plan.renoise_levels(est, start, cfg.renoise).int()
                renoise(frame, level, self.member, step, cfg.seed, sched.sqrt_alpha_bar,
                        sched.sqrt_one_minus_alpha_bar, stream, backend=self.backend)
            ticks = schedule_ticks(step_plan.total, self.buckets)
            order = ticks.order
            torch.index_select(x, 0, order, out=self.sx)
            torch.index_select(y, 0, order, out=self.sy)
            torch.index_select(self.long, 0, order, out=self.slong)
            self.sn[0] = plan.start_x[order]
            self.sn[1] = plan.start_y[order]
            self.smoves.copy_(plan.moves[order])
            self.scounts.copy_(counts[order])
            self.smember.copy_(self.member[order])
            self.sstep.fill_(t)
            for k, (a, padded) in enumerate(zip(ticks.active, ticks.padded, strict=True)):
                if k == 0 and reuse:
                    self.eps[0].copy_(out.eps_x[order])
                    self.eps[1].copy_(out.eps_y[order])
                    self._tick(padded, reuse=True)
                else:
                    self.run_tick(padded)
                    self.stats.count_forward(padded, a)
            self.stats.refine_forwards.append(len(ticks.active) - int(reuse))
            new = torch.empty_like(x)
            new[order] = self.sx
        self._flag(step_plan.over_limit, NOISE_LIMIT, t)
        levels = torch.where(alive[:, None], torch.stack([n_x, n_y], dim=1), -1)  # frozen: none
        return new, levels, step_plan.total.long()

    def _flag(self, mask: torch.Tensor, flag: int | torch.Tensor, t: int) -> None:
        self.flags.copy_(torch.where(mask & (self.flags == 0), flag, self.flags))
        self.flagged_at.copy_(torch.where(mask & (self.flagged_at < 0), t, self.flagged_at))

    def _accept(self, new: torch.Tensor, alive: torch.Tensor, t: int) -> None:
        """Take the new states of alive members that stayed finite and in bound; flag the rest."""
        alive = alive & (self.flags == 0)
        verdict = state_flags(new, self.cfg.bound)
        self._flag(alive & (verdict != 0), verdict, t)
        keep = alive & (verdict == 0)
        self.x.copy_(torch.where(keep[:, None, None, None], new, self.x))  # in place: graphs read x

    # ----------------------------------------------------------------------------- resume
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"x": self.x, "long": self.long, "member": self.member, "flags": self.flags,
                   "flagged_at": self.flagged_at}
        return tensors if self.history is None else {**tensors, "history": self.history}

    def load_state(self, tensors: dict[str, torch.Tensor], next_step: int) -> None:
        for name, value in tensors.items():
            getattr(self, name).copy_(value)
        self.next_step = next_step


@dataclass
class RolloutResult:
    """What `sns_engine.rollout` returns. States are in physical units."""

    states: torch.Tensor | None     # (B, saved, C, H, W) when no store was asked for
    store: str | None               # path of the Zarr ensemble store, when `out` was given
    flags: torch.Tensor             # (B,) bit set (see engine.rules)
    flagged_at: torch.Tensor        # (B,) step of the flag, −1 if none
    levels: torch.Tensor            # (B, steps, 2) estimated (n̂_x, n̂_y); −1 where not estimated
    moves: torch.Tensor             # (B, steps) refinement forwards per member and step
    stats: EngineStats | None = None

    @property
    def diverged(self) -> torch.Tensor:
        """(B,) bool: members that were flagged and frozen."""
        return self.flags != 0


def drive(engine: Engine, steps: int, save_every: int, writer=None, checkpoint=None,
          checkpoint_every: int = 0, quiet: bool = True,
          on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[list, list, list]:
    """Run `engine` up to `steps` physical steps, streaming to `writer` (or collecting in memory).

    `checkpoint(next_step)` is called every `checkpoint_every` steps after the writer is flushed,
    so a resumed run never misses a saved step; `on_step(levels, moves)` after every step.
    Returns the in-memory (states, levels, moves)."""
    from tqdm.auto import tqdm

    states, levels, moves = [], [], []
    with tqdm(total=steps, initial=engine.next_step, disable=quiet, unit="step", desc="rollout") as bar:
        while engine.next_step < steps:
            lv, mv = engine.step()
            if on_step is not None:
                on_step(lv, mv)
            save = engine.next_step % save_every == 0
            with profiling.range("write"):
                if writer is not None:
                    writer.put(engine.x if save else None, lv, mv)
                else:
                    levels.append(lv.cpu())
                    moves.append(mv.cpu())
                    if save:
                        states.append(engine.x.cpu().clone())
                if checkpoint is not None and checkpoint_every and (
                        engine.next_step % checkpoint_every == 0 or engine.next_step == steps):
                    with interrupts_deferred():  # Ctrl-C lands after the checkpoint, not inside
                        writer.flush(engine.flags, engine.flagged_at)
                        checkpoint(engine.next_step)
            bar.update(1)
    return states, levels, moves
