"""The DDPM noise schedule: cosine betas and every table derived from them.

Levels are n ∈ {0, 1, …, N}; level 0 is the clean frame. Every table has length N + 1 and is
indexed by level, with β_0 = 0, α_0 = ᾱ_0 = 1. A frame at level n is

    x_n = √ᾱ_n · x_0 + √(1 − ᾱ_n) · ε,                          ε ~ N(0, I)       (q_sample)

and one reverse (ancestral) step n → n − 1 given a noise estimate ε̂ is

    x_{n−1} = x_n / √α_n − β_n / (√(1 − ᾱ_n) √α_n) · ε̂ + σ_n z,  z ~ N(0, I)     (reverse_step)
            = recip_sqrt_alpha[n] · x_n − eps_coef[n] · ε̂ + sigma[n] · z

with the posterior standard deviation σ_n² = β_n (1 − ᾱ_{n−1}) / (1 − ᾱ_n). Since ᾱ_0 = 1,
σ_1 = 0: the last step is noiseless. The deterministic DDIM step (η = 0, no fresh noise) has the
same form with its own coefficients and σ = 0:

    x_{n−1} = √ᾱ_{n−1} · x̂_0 + √(1 − ᾱ_{n−1}) · ε̂,   x̂_0 = (x_n − √(1 − ᾱ_n) · ε̂) / √ᾱ_n
            = ddim_x_coef[n] · x_n − ddim_eps_coef[n] · ε̂                           (walk="ddim")
 The level-0 entries are (1, 0, 0), so a "step" at n = 0
returns x unchanged (for finite ε̂ and z); nothing has to special-case it.

Betas (Nichol & Dhariwal 2021): ᾱ(n) = f(n)/f(0), f(n) = cos²((n/N + s)/(1 + s) · π/2),
β_n = min(1 − ᾱ(n)/ᾱ(n−1), max_beta), and the tables use ᾱ_n = Π_{k≤n} (1 − β_k), which equals
f(n)/f(0) wherever no beta was clipped (only the last few levels are).
"""

from __future__ import annotations

import copy
import math

import torch

from sns_engine.config import WALKS, ConfigError

TABLES = ("betas", "alphas", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "sigma",
          "recip_sqrt_alpha", "eps_coef", "ddim_x_coef", "ddim_eps_coef")


def cosine_tables(num_levels: int, s: float = 0.008,
                  max_beta: float = 0.999) -> dict[str, torch.Tensor]:
    """All schedule tables in float64, each of length num_levels + 1 (see the module docstring)."""
    n = torch.arange(num_levels + 1, dtype=torch.float64)
    f = torch.cos((n / num_levels + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.cat([torch.zeros(1, dtype=torch.float64),
                       (1 - f[1:] / f[:-1]).clamp(max=max_beta)])
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    one_minus = 1 - alpha_bar
    sigma2 = torch.zeros_like(betas)
    sigma2[1:] = betas[1:] * one_minus[:-1] / one_minus[1:]
    eps_coef = torch.zeros_like(betas)
    eps_coef[1:] = betas[1:] / (one_minus[1:].sqrt() * alphas[1:].sqrt())
    ddim_x_coef = torch.ones_like(betas)
    ddim_x_coef[1:] = (alpha_bar[:-1] / alpha_bar[1:]).sqrt()
    ddim_eps_coef = torch.zeros_like(betas)
    ddim_eps_coef[1:] = ddim_x_coef[1:] * one_minus[1:].sqrt() - one_minus[:-1].sqrt()
    return {"betas": betas, "alphas": alphas, "alpha_bar": alpha_bar,
            "sqrt_alpha_bar": alpha_bar.sqrt(), "sqrt_one_minus_alpha_bar": one_minus.sqrt(),
            "sigma": sigma2.sqrt(), "recip_sqrt_alpha": alphas.rsqrt(), "eps_coef": eps_coef,
            "ddim_x_coef": ddim_x_coef, "ddim_eps_coef": ddim_eps_coef}


def _per_sample(table: torch.Tensor, n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[n] shaped to broadcast against `like` (B, ...): n is (B,), (1,) or a scalar."""
    n = torch.as_tensor(n, device=table.device)
    if n.ndim > 1 or (n.ndim == 1 and n.shape[0] not in (1, like.shape[0])):
        raise ValueError(f"level tensor n has shape {tuple(n.shape)} but the batch is "
                         f"{like.shape[0]}; pass one level per sample, shape ({like.shape[0]},)")
    return table[n.long()].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class CosineSchedule:
    """Owns the cosine DDPM tables (float32, length N + 1) and the two pure steps on them.

    Level tensors are not range-checked (that would cost a device sync); an out-of-range level
    fails in the indexing. `to(device)` returns a copy with the tables on `device`.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sigma: torch.Tensor
    recip_sqrt_alpha: torch.Tensor
    eps_coef: torch.Tensor

    def __init__(self, num_levels: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if num_levels < 1:
            raise ConfigError(f"num_levels must be ≥ 1, got {num_levels}")
        if s <= 0:
            raise ConfigError(f"cosine offset s must be positive, got {s} (reference: 0.008)")
        if not 0 < max_beta < 1:
            raise ConfigError(f"max_beta must be in (0, 1), got {max_beta} (reference: 0.999)")
        self.num_levels, self.s, self.max_beta = int(num_levels), float(s), float(max_beta)
        for name, table in cosine_tables(self.num_levels, self.s, self.max_beta).items():
            setattr(self, name, table.float())

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: str | torch.device) -> CosineSchedule:
        """A copy of this schedule with every table on `device`."""
        moved = copy.copy(self)
        for name in TABLES:
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def q_sample(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0 (B, ...) noised to per-sample levels n (B,): √ᾱ_n·x0 + √(1−ᾱ_n)·noise."""
        return (_per_sample(self.sqrt_alpha_bar, n, x0) * x0
                + _per_sample(self.sqrt_one_minus_alpha_bar, n, x0) * noise)

    def step_tables(self, walk: str = "ddpm") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x coefficient, ε̂ coefficient, σ) per level of the reverse step of `walk`: "ddpm" (the
        authors' ancestral step) or "ddim" (deterministic, η = 0: σ = 0)."""
        if walk == "ddpm":
            return self.recip_sqrt_alpha, self.eps_coef, self.sigma
        if walk == "ddim":
            return self.ddim_x_coef, self.ddim_eps_coef, torch.zeros_like(self.sigma)
        raise ConfigError(f"unknown walk {walk!r}; choose one of {WALKS}")

    def reverse_step(self, x: torch.Tensor, eps_hat: torch.Tensor, n: torch.Tensor,
                     z: torch.Tensor, walk: str = "ddpm") -> torch.Tensor:
        """One reverse step n → n−1 per sample (x at level n, n (B,)); pure, returns a new tensor.

        z is multiplied by σ_n, which is 0 at n ≤ 1 (and everywhere for walk="ddim"), so it has
        no effect there. At n = 0 the step is the identity (coefficients 1, 0, 0): a member
        already clean stays as it is.
        """
        x_coef, eps_coef, sigma = self.step_tables(walk)
        return (_per_sample(x_coef, n, x) * x - _per_sample(eps_coef, n, x) * eps_hat
                + _per_sample(sigma, n, x) * z)

    def __repr__(self) -> str:
        return (f"CosineSchedule(num_levels={self.num_levels}, s={self.s}, "
                f"max_beta={self.max_beta}, device={self.device})")
