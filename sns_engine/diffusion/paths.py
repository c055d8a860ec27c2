"""Traversal paths in the (n_x, n_y) plane, as data.

A refinement walks each member from its start levels (n_x, n_y) down to its end levels, one
*move* per network forward. A move steps x, y or both down one level (reverse DDPM step). Every
path here compiles, per member, into at most two phases `(move, count)` — so the engine and the
kernels only ever see two small integer arrays, whatever the path:

    path         start (n_x, n_y)     phase 0                 phase 1        refiner   published as
    emulator     —                    —                       —              none      bare emulator
    fix_short    (n̂_x, n̂_y)           x × n̂_x (y held)        —              refiner   SNS, authors' default
    gencast      (n̂_x, 0)             x × n̂_x                 —              refiner   GenCast-like (clean y)
    left_down    (n̂_x, n̂_y)           y × n̂_y                 x × n̂_x        refiner   SNS path A
    down_left    (n̂_x, n̂_y)           x × n̂_x                 y × n̂_y        refiner
    diagonal     (n̂_x, n̂_y)           higher × |n̂_x − n̂_y|   both × min     refiner   SNS ("denoising_SNS")
    acdm         (N, N)               both × N                —              refiner   ACDM
    generate     (N, n̂_y)             x × N                   —              refiner   Alg. 2
    thermalizer  (n̂_x, ·)             x × (n̂_x − stop)        —              thermal.  Thermalizer

Levels are n ∈ {0..N}, 0 clean (see diffusion.schedule); the authors' class k is our level k + 1
(docs/method.md). A frame whose start level is above its estimated level is re-noised to it (acdm,
generate); with `renoise=True` (the authors' `forward_diff=True`, the default) every frame is
re-noised to its start level with fresh noise — fix_short's y too, which then stays at n̂_y as
noisy conditioning while x walks. Each path's *gate* picks the members that refine; the others
keep the emulator's proposal. The default gate is the activation threshold on the head(s) the
settings name (n̂_x, or the larger of n̂_x and n̂_y, ≥ threshold; threshold 0 refines everyone);
the Thermalizer's gate is n̂_x > start, and it flags members estimated above `noise_limit`
instead of walking them.

A *level floor* (beyond the authors, docs/method.md): the path's rules read max(n̂_x, floor_x)
and max(n̂_y, floor_y) instead of the estimates, so a frame the heads call clean is still
re-noised to the floor and walked from there; the gate reads the estimates themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

NONE, X, Y, BOTH = 0, 1, 2, 3

Levels = torch.Tensor  # (B,) int


@dataclass(frozen=True)
class Plan:
    """Per-member walk: start levels, two phases of (move, count). All (B,) / (B, 2) int32."""

    start_x: Levels
    start_y: Levels
    moves: torch.Tensor
    counts: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """Forwards each member needs (its number of moves)."""
        return self.counts.sum(dim=1)


HEADS = ("x", "either")   # which estimate(s) the activation threshold reads


class Settings(NamedTuple):
    """What a path's rules may read besides the estimates: N and the rollout's path settings
    (levels in our labels: the authors' Thermalizer start 10 / stop 4 are our 11 / 5)."""

    num_levels: int
    threshold: int = 0
    heads: str = "x"
    thermalizer_start: int = 11
    thermalizer_stop: int = 5
    floor_x: int = 0
    floor_y: int = 0


Rule = Callable[[Levels, Levels, Settings], tuple[Levels, Levels]]  # → (n_x, n_y) or (move, count)
Gate = Callable[[Levels, Levels, Settings], torch.Tensor]           # → members that refine


def _const(move: int) -> Callable[[Levels], Levels]:
    return lambda like: torch.full_like(like, move)


def _above_threshold(n_x: Levels, n_y: Levels, s: Settings) -> torch.Tensor:
    return (n_x if s.heads == "x" else torch.maximum(n_x, n_y)) >= s.threshold


@dataclass(frozen=True)
class Path:
    """A traversal strategy: which members refine (gate), their start levels and two phases,
    each a function of (n̂_x, n̂_y, settings)."""

    name: str
    model: str | None                     # "refiner", "thermalizer" or None (no refinement)
    start: Rule
    phases: tuple[Rule, Rule]
    starts_above_estimate: bool = False   # re-noises a frame above its estimate (acdm, generate)
    gate: Gate = _above_threshold
    flags_noise_limit: bool = False       # members estimated above `noise_limit` are flagged

    def plan(self, n_x: Levels, n_y: Levels, s: Settings) -> Plan:
        """Compile the walk of every member from its estimated levels (n̂_x, n̂_y); members the
        gate leaves out stay where they are, with no moves."""
        n_x, n_y = n_x.long(), n_y.long()
        idle = ~self.gate(n_x, n_y, s)
        floored = n_x.clamp(min=s.floor_x), n_y.clamp(min=s.floor_y)
        start_x, start_y = self.start(*floored, s)
        rules = [rule(*floored, s) for rule in self.phases]
        moves = torch.stack([m for m, _ in rules], dim=1)
        counts = torch.stack([c for _, c in rules], dim=1)
        start_x = torch.where(idle, n_x, start_x)
        start_y = torch.where(idle, n_y, start_y)
        counts = torch.where(idle[:, None], 0, counts)
        return Plan(start_x.int(), start_y.int(), moves.int(), counts.int())

    def reuses_estimate(self, renoise: bool, floored: bool = False) -> bool:
        """Whether the estimate's forward can serve as the first move's ε̂: only when no frame is
        re-noised before the walk (no `renoise`, no level floor). Otherwise the estimate is a
        levels-only pass (no decoder)."""
        return not (renoise or floored or self.starts_above_estimate)


def _none(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return torch.zeros_like(n_x), torch.zeros_like(n_x)


def _estimated(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return n_x, n_y


def _pure_noise(like: Levels, s: Settings) -> Levels:
    return torch.full_like(like, s.num_levels)


def _walk_x(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return _const(X)(n_x), n_x


def _walk_y(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return _const(Y)(n_x), n_y


def _clean_y(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return n_x, torch.zeros_like(n_y)


PATHS: dict[str, Path] = {
    "emulator": Path("emulator", None, _estimated, (_none, _none)),
    "fix_short": Path("fix_short", "refiner", _estimated, (_walk_x, _none)),
    "gencast": Path("gencast", "refiner", _clean_y, (_walk_x, _none)),
    "left_down": Path("left_down", "refiner", _estimated, (_walk_y, _walk_x)),
    "down_left": Path("down_left", "refiner", _estimated, (_walk_x, _walk_y)),
    "diagonal": Path("diagonal", "refiner", _estimated,
                     (lambda nx, ny, s: (torch.where(nx > ny, X, Y), (nx - ny).abs()),
                      lambda nx, ny, s: (_const(BOTH)(nx), torch.minimum(nx, ny)))),
    "acdm": Path("acdm", "refiner", lambda nx, ny, s: (_pure_noise(nx, s), _pure_noise(ny, s)),
                 (lambda nx, ny, s: (_const(BOTH)(nx), _pure_noise(nx, s)), _none), True),
    "generate": Path("generate", "refiner", lambda nx, ny, s: (_pure_noise(nx, s), ny),
                     (lambda nx, ny, s: (_const(X)(nx), _pure_noise(nx, s)), _none), True),
    # y is ignored (never re-noised); members estimated above `start` walk from their estimate
    # down to `stop`
    "thermalizer": Path("thermalizer", "thermalizer", _clean_y,
                        (lambda nx, ny, s: (_const(X)(nx), (nx - s.thermalizer_stop).clamp(min=0)),
                         _none),
                        gate=lambda nx, ny, s: nx > s.thermalizer_start, flags_noise_limit=True),
}


def get_path(name: str) -> Path:
    """The path called `name`; a clear error listing the valid names otherwise."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose one of {sorted(PATHS)}")
    return PATHS[name]


def settings_of(cfg, num_levels: int) -> Settings:
    """The Settings of a RolloutConfig-like `cfg`; an unset threshold refines every member (the
    API fills it in from the bundle's system default before it gets here)."""
    return Settings(num_levels, cfg.threshold or 0, cfg.threshold_heads or "x",
                    cfg.thermalizer_start, cfg.thermalizer_stop, cfg.level_floor, cfg.level_floor_y)


def lattice_points(plan: Plan, member: int = 0) -> list[tuple[int, int]]:
    """The (n_x, n_y) points one member visits, start included, in order (for tests and plots)."""
    n_x, n_y = int(plan.start_x[member]), int(plan.start_y[member])
    points = [(n_x, n_y)]
    for phase in range(2):
        move, count = int(plan.moves[member, phase]), int(plan.counts[member, phase])
        for _ in range(count):
            n_x -= move in (X, BOTH)
            n_y -= move in (Y, BOTH)
            points.append((n_x, n_y))
    return points
