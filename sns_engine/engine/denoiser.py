"""The one network interface a rollout needs, whatever model sits behind it.

A `Denoiser` maps (long-lag frame, y at n_y, x at n_x) to ε̂ for both frames and level logits for
both; it is not told the levels. The SNS refiner is one directly; the Thermalizer (unconditional,
x only) is wrapped so y gets zero ε̂ and a copy of x's logits. Tests plug analytic denoisers in.
Also here: the noise sources (deterministic counter-based, keyed by member, step, level, stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

from sns_engine.ops import rng


class DenoiserOutput(NamedTuple):
    eps_y: torch.Tensor
    eps_x: torch.Tensor
    logits_y: torch.Tensor
    logits_x: torch.Tensor


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], DenoiserOutput]


def refiner_denoiser(refiner: torch.nn.Module) -> Denoiser:
    """The SNS refiner as a Denoiser."""

    def run(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> DenoiserOutput:
        out = refiner(long, y, x)
        return DenoiserOutput(out.eps_y, out.eps_x, out.logits_y, out.logits_x)

    return run


def thermalizer_denoiser(thermalizer: torch.nn.Module) -> Denoiser:
    """The unconditional Thermalizer as a Denoiser acting on x alone."""

    def run(long: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> DenoiserOutput:
        eps, logits = thermalizer(x)
        return DenoiserOutput(torch.zeros_like(eps), eps, logits, logits)

    return run


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
        return torch.randn((member.shape[0], *shape), generator=self.generator)
