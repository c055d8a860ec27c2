"""Training losses of the three models, and the random draws they take.

Draws (levels, noise) are made apart from the losses, on the CPU generator the training loop
seeds per step, so a step's randomness does not depend on device or data-parallel layout.

Level draws: n ∈ {0, …, N} with P(n) ∝ exp(−bias·n). bias = 0 is uniform; bias > 0 favours small
levels (the reference biases its draw toward them, "sampling_bias 0.01"; its exact law is not
used here). With bias = 0.01 and N = 1000, P(n < 100) ≈ 0.63 and P(n > 500) ≈ 0.007. Level 0
(a clean frame) is drawn too: the heads must recognise clean frames, and the ε target there is
pure noise, whose best estimate is ε̂ = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.config import ConfigError
from sns_engine.diffusion.schedule import CosineSchedule

Draws = dict[str, torch.Tensor]
Parts = dict[str, float]


def draw_levels(batch: int, num_levels: int, bias: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """`batch` levels in {0..num_levels} (int64), P(n) ∝ exp(−bias·n) (see the module docstring)."""
    if bias < 0:
        raise ConfigError(f"level bias must be ≥ 0 (0 = uniform), got {bias}")
    weights = torch.exp(-bias * torch.arange(num_levels + 1, dtype=torch.float64))
    return torch.multinomial(weights, batch, replacement=True, generator=generator)


def draw_refiner(shape: torch.Size, num_levels: int, bias: float = 0.0,
                 generator: torch.Generator | None = None) -> Draws:
    """Independent levels and noise for y and x of a (B, 3, C, H, W) batch of refiner triples."""
    batch, frame = shape[0], (shape[0], *shape[2:])
    return {"n_y": draw_levels(batch, num_levels, bias, generator),
            "n_x": draw_levels(batch, num_levels, bias, generator),
            "eps_y": torch.randn(frame, generator=generator),
            "eps_x": torch.randn(frame, generator=generator)}


def draw_thermalizer(shape: torch.Size, num_levels: int, bias: float = 0.0,
                     generator: torch.Generator | None = None) -> Draws:
    """A level and noise per frame of a (B, 1, C, H, W) batch."""
    return {"n": draw_levels(shape[0], num_levels, bias, generator),
            "eps": torch.randn((shape[0], *shape[2:]), generator=generator)}


def _level_ce(logits: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of a level head and its accuracy (argmax == n)."""
    logits = logits.float()
    return F.cross_entropy(logits, n), (logits.argmax(-1) == n).float().mean()


def emulator_loss(model: nn.Module, window: torch.Tensor) -> tuple[torch.Tensor, Parts]:
    """MSE unrolled through the model's own predictions over a (B, k+1, C, H, W) window.

    x̂_0 = window[:, 0], x̂_t = model(x̂_{t−1}); loss = mean over t = 1..k of MSE(x̂_t, window[:, t]),
    gradients flowing through the whole unroll."""
    if window.ndim != 5 or window.shape[1] < 2:
        raise ValueError(f"emulator window has shape {tuple(window.shape)}; expected "
                         "(B, k+1, C, H, W) with k ≥ 1")
    x, errors = window[:, 0], []
    for t in range(1, window.shape[1]):
        x = model(x)
        errors.append(F.mse_loss(x.float(), window[:, t].float()))
    loss = torch.stack(errors).mean()
    return loss, {"mse": loss.item(), "mse_last": errors[-1].item()}


def refiner_loss(model: nn.Module, schedule: CosineSchedule, frames: torch.Tensor, draws: Draws,
                 ce_weight: float = 0.1) -> tuple[torch.Tensor, Parts]:
    """SNS loss on (long, y0, x0) = frames (B, 3, C, H, W), levels and noise from `draw_refiner`.

    y and x are noised independently to n_y, n_x; loss = MSE(ε̂, ε) over both frames
    + ce_weight · (CE_y + CE_x) of the two level heads."""
    long, y0, x0 = frames.unbind(1)
    y = schedule.q_sample(y0, draws["n_y"], draws["eps_y"])
    x = schedule.q_sample(x0, draws["n_x"], draws["eps_x"])
    out = model(long, y, x)
    mse = (F.mse_loss(out.eps_y.float(), draws["eps_y"])
           + F.mse_loss(out.eps_x.float(), draws["eps_x"])) / 2
    ce_y, acc_y = _level_ce(out.logits_y, draws["n_y"])
    ce_x, acc_x = _level_ce(out.logits_x, draws["n_x"])
    loss = mse + ce_weight * (ce_y + ce_x)
    return loss, {"mse": mse.item(), "ce_y": ce_y.item(), "ce_x": ce_x.item(),
                  "acc_y": acc_y.item(), "acc_x": acc_x.item()}


def thermalizer_loss(model: nn.Module, schedule: CosineSchedule, frames: torch.Tensor,
                     draws: Draws, ce_weight: float = 0.1) -> tuple[torch.Tensor, Parts]:
    """Thermalizer loss on frames (B, 1, C, H, W): MSE(ε̂, ε) + ce_weight · CE of its head."""
    x = schedule.q_sample(frames[:, 0], draws["n"], draws["eps"])
    eps_hat, logits = model(x)
    mse = F.mse_loss(eps_hat.float(), draws["eps"])
    ce, acc = _level_ce(logits, draws["n"])
    loss = mse + ce_weight * ce
    return loss, {"mse": mse.item(), "ce": ce.item(), "acc": acc.item()}
