"""The one network interface a rollout needs, whatever model sits behind it.

A `Denoiser` maps (long-lag frame, y at n_y, x at n_x) to ε̂ for both frames and level logits for
both; it is not told the levels. It also offers the levels-only pass. The SNS refiner is one
directly; the Thermalizer (unconditional, x only) is wrapped so y gets zero ε̂ and a copy of x's
logits. Tests plug analytic denoisers in.
Also here: the noise sources (deterministic counter-based, keyed by member, step, level, stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from sns_engine.models.unet import find_unet, forward_flops
from sns_engine.ops import rng


class DenoiserOutput(NamedTuple):
    eps_y: torch.Tensor
    eps_x: torch.Tensor
    logits_y: torch.Tensor
    logits_x: torch.Tensor


class LevelLogits(NamedTuple):
    logits_y: torch.Tensor
    logits_x: torch.Tensor


class LevelEstimate(NamedTuple):
    n_y: torch.Tensor        # (B,) int64 argmax level of y
    n_x: torch.Tensor        # (B,) int64 argmax level of x


Frames = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], DenoiserOutput]


@dataclass(frozen=True)
class Denoiser:
    """`denoiser(long, y, x)` is the full forward (ε̂ of both frames and both heads' logits);
    `levels(long, y, x)` only the heads' logits and `estimate(long, y, x)` only their argmax
    levels — for a U-Net its encoder, middle and heads, no decoder, as the authors'
    `ratio_class_both`; `estimate` runs the heads' last linear and argmax fused. `flops(kind)`,
    where known, gives the FLOPs per member of the "forward" or the "levels" pass."""

    forward: Frames
    levels: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], LevelLogits]
    estimate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], LevelEstimate]
    flops: Callable[[str], int] | None = None

    def __call__(self, long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> DenoiserOutput:
        return self.forward(long, y, x)

    @classmethod
    def from_forward(cls, forward: Frames) -> Denoiser:
        """A denoiser whose level estimate is read off its full forward (analytic test models)."""
        def levels(long, y, x):
            out = forward(long, y, x)
            return LevelLogits(out.logits_y, out.logits_x)

        def estimate(long, y, x):
            out = levels(long, y, x)
            return LevelEstimate(out.logits_y.argmax(-1), out.logits_x.argmax(-1))

        return cls(forward, levels, estimate)


def refiner_denoiser(refiner: torch.nn.Module, backend: str = "torch") -> Denoiser:
    """The SNS refiner as a Denoiser; every pass runs the fused ops (the U-Net's conv blocks, the
    estimate's fused head, ops.level_argmax) under `backend`."""

    def forward(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> DenoiserOutput:
        out = refiner(long, y, x, backend=backend)
        return DenoiserOutput(out.eps_y, out.eps_x, out.logits_y, out.logits_x)

    return Denoiser(forward, lambda long, y, x: LevelLogits(*refiner.levels(long, y, x, backend=backend)),
                    lambda long, y, x: LevelEstimate(*refiner.estimate(long, y, x, backend)),
                    _flops(refiner))


def thermalizer_denoiser(thermalizer: torch.nn.Module, backend: str = "torch") -> Denoiser:
    """The unconditional Thermalizer as a Denoiser acting on x alone (y: zero ε̂, x's logits);
    every pass runs the fused ops under `backend`, as `refiner_denoiser`."""

    def forward(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> DenoiserOutput:
        eps, logits = thermalizer(x, backend=backend)
        return DenoiserOutput(torch.zeros_like(eps), eps, logits, logits)

    def levels(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> LevelLogits:
        logits = thermalizer.levels(x, backend=backend)
        return LevelLogits(logits, logits)

    def estimate(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> LevelEstimate:
        n = thermalizer.estimate(x, backend)
        return LevelEstimate(n, n)

    return Denoiser(forward, levels, estimate, _flops(thermalizer))


def _flops(model: torch.nn.Module) -> Callable[[str], int] | None:
    """`forward_flops` of the model's U-Net, or None if it has none (analytic test models)."""
    return functools.partial(forward_flops, model) if find_unet(model) is not None else None


class NoiseSource(Protocol):
    def __call__(self, member: torch.Tensor, step: torch.Tensor, level: torch.Tensor, stream: int,
                 shape: tuple[int, ...]) -> torch.Tensor: ...


class CounterNoise:
    """Deterministic Gaussian noise keyed by (seed, member, physical step, level, stream, pixel).

    A member's noise does not depend on which other members share its batch or its slot, which is
    what makes engine, reference and kernels agree member by member."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, member, step, level, stream, shape):
        return rng.normal(self.seed, member, step, level, stream, shape)


class TorchNoise:
    """Fresh i.i.d. Gaussian noise from a torch generator, ignoring the keys (fast, not
    reproducible across batch layouts; for statistics, not for engine-vs-reference checks)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, member, step, level, stream, shape):
        return torch.randn((member.shape[0], *shape), generator=self.generator, device=member.device)
