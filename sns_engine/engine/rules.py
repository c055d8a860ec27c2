"""The refinement rules of a rollout, in one place: the engine and the reference oracle both call them.

Per physical step and member:

- activation: which members a path refines by default (the bundle's system default fills an unset
  threshold: Kolmogorov every member every step, QG either head ≥ 7, as the authors run it), and
  on which physical steps (`every`: steps 0, m, 2m, …; the others are bare emulator steps);
- long-lag frame: the initial state (the authors' drivers) or the member's own state `lag` steps
  back (`long="lagged"`, the relation the refiner was trained on; the initial state until then);
- estimate: (n̂_x, n̂_y) = argmax of the two level heads;
- refinement: the path's plan from the estimate (raised to the level floors, if any); members
  estimated above `noise_limit` (the Thermalizer's rule) are flagged instead of walked, and frozen
  members never walk; the walk's reverse step is DDPM (published) or DDIM (`walk`);
- re-noise: a walking frame gets fresh noise up to its start level when that is above its estimate
  or when `renoise` asks for it (the authors' `forward_diff`);
- reuse: the estimate's full forward serves the first move only when nothing is re-noised (no
  `renoise`, no floor: `reuses_estimate`); otherwise the estimate is a levels-only pass;
- acceptance: a new state that is non-finite or beyond `bound` is not taken; the member is flagged
  and frozen, the others go on.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from sns_engine.config import RolloutConfig
from sns_engine.diffusion.paths import Path, Plan, settings_of

NONFINITE, OUT_OF_BOUND, NOISE_LIMIT = 1, 2, 4   # flag bits of a frozen member


def with_activation(cfg: RolloutConfig, activation: dict) -> RolloutConfig:
    """`cfg` with an unset threshold / heads taken from a bundle's `activation` default."""
    return dataclasses.replace(
        cfg, threshold=activation["threshold"] if cfg.threshold is None else cfg.threshold,
        threshold_heads=cfg.threshold_heads or activation["threshold_heads"])


def describe_activation(cfg: RolloutConfig) -> str:
    """Which members the rollout refines, in words."""
    if cfg.threshold == 0:
        return "refining every member every step"
    head = "n̂_x" if cfg.threshold_heads == "x" else "max(n̂_x, n̂_y)"
    return f"refining members with {head} ≥ {cfg.threshold}"


def refines_at(cfg: RolloutConfig, step: int) -> bool:
    """Whether physical step `step` (0-based) is refined: every `cfg.every`-th, from step 0."""
    return step % cfg.every == 0


def reuses_estimate(path: Path, cfg: RolloutConfig) -> bool:
    """Whether the estimate's full forward serves as the first move (nothing re-noised)."""
    return path.reuses_estimate(cfg.renoise, floored=bool(cfg.level_floor or cfg.level_floor_y))


def lagged_index(cfg: RolloutConfig, step: int) -> int | None:
    """The physical step whose state is the long-lag frame at `step`: step − lag, the initial
    state (0) before that; None with long="initial" (the frame the rollout started with)."""
    if cfg.long == "initial":
        return None
    if cfg.lag is None:
        raise ValueError("long='lagged' needs lag (the API takes the refiner's training lag)")
    return max(step - cfg.lag, 0)


def estimate_levels(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(n̂_x, n̂_y) = argmax of the two heads' logits of a full forward."""
    return out.logits_x.argmax(dim=-1), out.logits_y.argmax(dim=-1)


UNCALIBRATED_LEVEL = 50   # without a calibration, a median first estimate above this is suspect


def far_above_calibration(levels: torch.Tensor, calibration: dict | None) -> str | None:
    """A warning when the first refined step's estimates (levels (B, 2): n̂_x, n̂_y; −1 not
    estimated) sit far above what the bundle's heads read on the emulator's own proposals (its
    calibration, one free step: median n̂_x > 3 × its 90th percentile + 5), or above
    UNCALIBRATED_LEVEL when the bundle has no calibration; None when they look as calibrated.
    Untrained or mismatched heads read hundreds and make every walk that long."""
    n_x = levels[:, 0][levels[:, 0] >= 0]
    if n_x.numel() == 0:
        return None
    median = int(n_x.float().median())
    if calibration is None:
        limit, seen = UNCALIBRATED_LEVEL, "the bundle has no calibration"
    else:
        p90 = calibration["emulator"]["n_x"][0]["p90"]
        limit, seen = 3 * p90 + 5, f"its calibration reads n̂_x ≤ {p90:g} on the emulator's proposals"
    if median <= limit:
        return None
    return (f"the level heads' first estimates sit far above this bundle's calibration (median "
            f"n̂_x = {median}; {seen}): the heads may be untrained or meant for other data, and "
            f"each walk costs about {median} refiner forwards; check them with `sns-engine "
            "calibrate BUNDLE --data STORE`")


class Refinement(NamedTuple):
    """One step's refinement of every member: the path's plan, the moves each member makes per
    phase (the plan's, 0 for members that do not walk) and the members flagged over the limit."""

    plan: Plan
    counts: torch.Tensor       # (B, 2) int
    over_limit: torch.Tensor   # (B,) bool

    @property
    def total(self) -> torch.Tensor:
        """(B,) forwards each member spends walking (its number of moves)."""
        return self.counts.sum(dim=1)

    def renoise_levels(self, estimate: torch.Tensor, start: torch.Tensor, renoise: bool) -> torch.Tensor:
        """(B,) level each member's frame is re-noised to before the walk, 0 where it is kept: its
        start level, for members that walk, start above 0 and above `estimate` (or `renoise`)."""
        fresh = (self.total > 0) & (start > 0) & ((start > estimate) | renoise)
        return torch.where(fresh, start, 0)


def refinement(path: Path, n_x: torch.Tensor, n_y: torch.Tensor, cfg: RolloutConfig,
               num_levels: int, alive: torch.Tensor) -> Refinement:
    """The Refinement of members estimated at (n̂_x, n̂_y); frozen members (not `alive`) never walk."""
    plan = path.plan(n_x, n_y, settings_of(cfg, num_levels))
    over_limit = alive & (n_x > cfg.noise_limit) if path.flags_noise_limit else torch.zeros_like(alive)
    counts = torch.where((alive & ~over_limit)[:, None], plan.counts, 0)
    return Refinement(plan, counts, over_limit)


def state_flags(new: torch.Tensor, bound: float) -> torch.Tensor:
    """(B,) int32 flag of each member's new state: NONFINITE, OUT_OF_BOUND (|value| > bound) or 0."""
    flat = new.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    in_bound = flat.abs().amax(dim=1) <= bound
    flags = torch.where(finite, torch.where(in_bound, 0, OUT_OF_BOUND), NONFINITE)
    return flags.to(torch.int32)
