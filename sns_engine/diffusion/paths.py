"""Traversal paths in the (n_x, n_y) plane, as data.

A refinement walks each member from its start levels (n_x, n_y) down to its end levels, one
*move* per network forward. A move steps x, y or both down one level (reverse DDPM step). Every
path here compiles, per member, into at most two phases `(move, count)` — so the engine and the
kernels only ever see two small integer arrays, whatever the path:

    path         start (n_x, n_y)     phase 0                 phase 1        refiner   published as
    emulator     —                    —                       —              none      bare emulator
    fix_short    (n̂_x, 0)             x × n̂_x                 —              refiner   GenCast-like
    left_down    (n̂_x, n̂_y)           y × n̂_y                 x × n̂_x        refiner   SNS path A
    down_left    (n̂_x, n̂_y)           x × n̂_x                 y × n̂_y        refiner
    diagonal     (n̂_x, n̂_y)           higher × |n̂_x − n̂_y|   both × min     refiner
    acdm         (N, N)               both × N                —              refiner   ACDM
    generate     (N, n̂_y)             x × N                   —              refiner   Alg. 2
    thermalizer  (start, ·)           x × (start − stop)      —              thermal.  Thermalizer

Levels are n ∈ {0..N}, 0 clean (see diffusion.schedule). A frame whose start level is above its
estimated level is re-noised to it (acdm, generate); with `renoise=True` (the reference code's
default) every frame is re-noised to its start level with fresh noise. Each path's *gate* picks the
members that refine; the others are left as the emulator proposed them. The default gate is the
activation threshold (n̂_x ≥ threshold); the Thermalizer's is n̂_x > start, and it flags members
estimated above `noise_limit` instead of walking them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

NONE, X, Y, BOTH = 0, 1, 2, 3
MOVE_NAMES = {NONE: "none", X: "x", Y: "y", BOTH: "both"}

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


class Settings(NamedTuple):
    """What a path's rules may read besides the estimates: N and the rollout's path settings."""

    num_levels: int
    threshold: int = 0
    thermalizer_start: int = 10
    thermalizer_stop: int = 4


Rule = Callable[[Levels, Levels, Settings], tuple[Levels, Levels]]  # → (n_x, n_y) or (move, count)
Gate = Callable[[Levels, Levels, Settings], torch.Tensor]           # → members that refine


def _const(move: int) -> Callable[[Levels], Levels]:
    return lambda like: torch.full_like(like, move)


def _above_threshold(n_x: Levels, n_y: Levels, s: Settings) -> torch.Tensor:
    return n_x >= s.threshold


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

    def plan(self, n_x: Levels, n_y: Levels, num_levels: int, threshold: int = 0,
             thermalizer_start: int = 10, thermalizer_stop: int = 4) -> Plan:
        """Compile the walk of every member from its estimated levels (n̂_x, n̂_y); members the
        gate leaves out stay where they are, with no moves."""
        n_x, n_y = n_x.long(), n_y.long()
        s = Settings(num_levels, threshold, thermalizer_start, thermalizer_stop)
        start_x, start_y = self.start(n_x, n_y, s)
        rules = [rule(n_x, n_y, s) for rule in self.phases]
        moves = torch.stack([m for m, _ in rules], dim=1)
        counts = torch.stack([c for _, c in rules], dim=1)
        idle = ~self.gate(n_x, n_y, s)
        start_x = torch.where(idle, n_x, start_x)
        start_y = torch.where(idle, n_y, start_y)
        counts = torch.where(idle[:, None], 0, counts)
        return Plan(start_x.int(), start_y.int(), moves.int(), counts.int())


def _none(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return torch.zeros_like(n_x), torch.zeros_like(n_x)


def _estimated(n_x: Levels, n_y: Levels, s: Settings) -> tuple[Levels, Levels]:
    return n_x, n_y


def _pure_noise(like: Levels, s: Settings) -> Levels:
    return torch.full_like(like, s.num_levels)


PATHS: dict[str, Path] = {
    "emulator": Path("emulator", None, _estimated, (_none, _none)),
    "fix_short": Path("fix_short", "refiner", lambda nx, ny, s: (nx, torch.zeros_like(ny)),
                      (lambda nx, ny, s: (_const(X)(nx), nx), _none)),
    "left_down": Path("left_down", "refiner", _estimated,
                      (lambda nx, ny, s: (_const(Y)(nx), ny), lambda nx, ny, s: (_const(X)(nx), nx))),
    "down_left": Path("down_left", "refiner", _estimated,
                      (lambda nx, ny, s: (_const(X)(nx), nx), lambda nx, ny, s: (_const(Y)(nx), ny))),
    "diagonal": Path("diagonal", "refiner", _estimated,
                     (lambda nx, ny, s: (torch.where(nx > ny, X, Y), (nx - ny).abs()),
                      lambda nx, ny, s: (_const(BOTH)(nx), torch.minimum(nx, ny)))),
    "acdm": Path("acdm", "refiner", lambda nx, ny, s: (_pure_noise(nx, s), _pure_noise(ny, s)),
                 (lambda nx, ny, s: (_const(BOTH)(nx), _pure_noise(nx, s)), _none), True),
    "generate": Path("generate", "refiner", lambda nx, ny, s: (_pure_noise(nx, s), ny),
                     (lambda nx, ny, s: (_const(X)(nx), _pure_noise(nx, s)), _none), True),
    # y is ignored (not re-noised); only members noisier than `start` walk, from start to stop
    "thermalizer": Path("thermalizer", "thermalizer",
                        lambda nx, ny, s: (torch.full_like(nx, s.thermalizer_start), torch.zeros_like(ny)),
                        (lambda nx, ny, s: (_const(X)(nx),
                                            torch.full_like(nx, s.thermalizer_start - s.thermalizer_stop)),
                         _none),
                        gate=lambda nx, ny, s: nx > s.thermalizer_start, flags_noise_limit=True),
}


def get_path(name: str) -> Path:
    """The path called `name`; a clear error listing the valid names otherwise."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose one of {sorted(PATHS)}")
    return PATHS[name]


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
