"""The reference rollout: one member at a time, one forward per move, obviously correct.

This is the oracle every fast path is tested against (engine, kernels, sharding). One physical
step of one member:

1. proposal x̂ = emulator(x_t)
2. estimate (n̂_x, n̂_y) = argmax of the level heads on (long, y = x_t, x = x̂): a levels-only
   pass, or the full forward when its ε̂ serves the first move (no re-noising)
3. plan = path.plan(n̂_x, n̂_y): start levels and two phases of moves (diffusion.paths)
4. re-noise each frame to its start level (if `renoise`, or if the start is above the estimate)
5. walk: for each move, one forward on (long, y, x), reverse step of the frame(s) it moves
6. x_{t+1} = the walked x; a non-finite or out-of-bound result is not taken: the member keeps
   its last good state, is flagged and frozen, and the other members go on.

Steps 2–5 run on the steps `every` names (the others keep the proposal); the long frame is the
initial state or, with long="lagged", the member's state `lag` steps back (all past states kept).
"""

from __future__ import annotations

import torch

from sns_engine.config import RolloutConfig
from sns_engine.diffusion.paths import BOTH, Path, Plan, X, Y, get_path
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import Denoiser, NoiseSource
from sns_engine.engine.rollout import RolloutResult
from sns_engine.engine.rules import (
    NOISE_LIMIT,
    estimate_levels,
    lagged_index,
    refinement,
    refines_at,
    reuses_estimate,
    state_flags,
)
from sns_engine.ops import rng


def walk(denoiser: Denoiser, schedule: CosineSchedule, long: torch.Tensor, y: torch.Tensor,
         x: torch.Tensor, plan: Plan, noise: NoiseSource, member: torch.Tensor, step: torch.Tensor,
         first=None, kind: str = "ddpm") -> tuple[torch.Tensor, torch.Tensor]:
    """Walk members that share one plan (the reference passes one member at a time); returns
    the walked (y, x). `first` is a forward already computed on exactly these inputs (reused for
    the first move); `kind` the reverse step ("ddpm" or "ddim", schedule.step_tables)."""
    if not all(bool((t == t[:1]).all()) for t in (plan.start_x, plan.start_y, plan.moves, plan.counts)):
        raise ValueError("walk() takes members that share one plan; walk the others separately")
    n_x, n_y = plan.start_x.long(), plan.start_y.long()
    for phase in range(2):
        move = int(plan.moves[0, phase])
        for _ in range(int(plan.counts[0, phase])):
            out = first if first is not None else denoiser(long, y, x)
            first = None
            if move in (Y, BOTH):
                z = noise(member, step, n_y, rng.STREAM_Y, tuple(y.shape[1:]))
                y = schedule.reverse_step(y, out.eps_y, n_y, z, kind)
                n_y = n_y - 1
            if move in (X, BOTH):
                z = noise(member, step, n_x, rng.STREAM_X, tuple(x.shape[1:]))
                x = schedule.reverse_step(x, out.eps_x, n_x, z, kind)
                n_x = n_x - 1
    return y, x


def refine_member(path: Path, denoiser: Denoiser, schedule: CosineSchedule, long, y, x,
                  cfg: RolloutConfig, noise: NoiseSource, member, step):
    """Estimate, plan, re-noise and walk one member (engine.rules); returns (x_new, n̂_x, n̂_y,
    moves, flag)."""
    reused = reuses_estimate(path, cfg)
    out = None
    if reused:
        out = denoiser(long, y, x)
        n_x, n_y = estimate_levels(out)
    else:
        n_y, n_x = denoiser.estimate(long, y, x)
    step_plan = refinement(path, n_x, n_y, cfg, schedule.num_levels, torch.ones(1, dtype=torch.bool))
    if bool(step_plan.over_limit):
        return x, n_x, n_y, 0, NOISE_LIMIT
    for frame, est, start, stream in ((0, n_y, step_plan.plan.start_y, rng.STREAM_RENOISE_Y),
                                      (1, n_x, step_plan.plan.start_x, rng.STREAM_RENOISE_X)):
        level = step_plan.renoise_levels(est, start, cfg.renoise).long()
        if int(level) > 0:
            target = (y, x)[frame]
            z = noise(member, step, level, stream, tuple(target.shape[1:]))
            noised = schedule.q_sample(target, level, z)
            y, x = (noised, x) if frame == 0 else (y, noised)
            reused = False
    _, x = walk(denoiser, schedule, long, y, x, step_plan.plan, noise, member, step,
                first=out if reused else None, kind=cfg.walk)
    return x, n_x, n_y, int(step_plan.total), 0


def reference_rollout(emulator: torch.nn.Module, denoiser: Denoiser | None, schedule: CosineSchedule,
                      initial: torch.Tensor, cfg: RolloutConfig, noise: NoiseSource,
                      members: torch.Tensor | None = None, long: torch.Tensor | None = None,
                      first_step: int = 0) -> RolloutResult:
    """Roll `initial` (B, C, H, W) forward `cfg.steps` physical steps, member by member.

    `members` are the global ids keying each member's noise (default 0..B−1); `long` the long-lag
    frames (default: the initial conditions, as in the paper) of long="initial"."""
    path = get_path(cfg.path)
    if path.model is not None and denoiser is None:
        raise ValueError(f"path {cfg.path!r} needs a {path.model} but none was given")
    if cfg.long == "lagged" and first_step:
        raise ValueError("long='lagged' needs the states before first_step; start at step 0")
    batch = initial.shape[0]
    members = torch.arange(batch) if members is None else members
    long = initial.clone() if long is None else long
    x = initial.clone()
    flags = torch.zeros(batch, dtype=torch.int32)
    flagged_at = torch.full((batch,), -1, dtype=torch.long)
    levels = torch.full((batch, cfg.steps, 2), -1, dtype=torch.long)
    moves = torch.zeros(batch, cfg.steps, dtype=torch.long)
    saved, past = [], []   # past: every state so far, for long="lagged"
    with torch.no_grad():
        for t in range(cfg.steps):
            step = torch.tensor([first_step + t])
            past.append(x.clone())
            lagged = lagged_index(cfg, t)
            frames = long if lagged is None else past[lagged]
            for b in range(batch):
                if flags[b]:
                    continue
                x_b, m_b = x[b:b + 1], members[b:b + 1]
                new = emulator(x_b)
                flag = 0
                if path.model is not None and refines_at(cfg, first_step + t):
                    new, n_x, n_y, spent, flag = refine_member(
                        path, denoiser, schedule, frames[b:b + 1], x_b, new, cfg, noise, m_b, step)
                    levels[b, t] = torch.stack([n_x[0], n_y[0]])
                    moves[b, t] = spent
                flag = flag or int(state_flags(new, cfg.bound))
                if flag:
                    flags[b], flagged_at[b] = flag, first_step + t
                else:
                    x[b] = new[0]
            if (t + 1) % cfg.save_every == 0:
                saved.append(x.clone())
    states = torch.stack(saved, dim=1) if saved else x.new_zeros((batch, 0, *x.shape[1:]))
    return RolloutResult(states, None, flags, flagged_at, levels, moves)
