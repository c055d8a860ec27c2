"""Training losses and draws: wiring against stub models, level laws, and short toy trainings."""

import math

import pytest
import torch

from sns_engine.config import ConfigError
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.models.emulator import Emulator
from sns_engine.models.refiner import Refiner, RefinerOutput
from sns_engine.models.thermalizer import Thermalizer
from sns_engine.models.unet import UNetConfig
from sns_engine.train import losses

GRID = 16


def smooth_fields(batch: int, channels: int, gen: torch.Generator, kmax: int = 3) -> torch.Tensor:
    """Random periodic fields made of Fourier modes |k| ≤ kmax, unit std per field."""
    spec = torch.zeros(batch, channels, GRID, GRID, dtype=torch.complex64)
    k = torch.fft.fftfreq(GRID, 1 / GRID)
    low = (k[:, None].abs() <= kmax) & (k[None, :].abs() <= kmax)
    coef = torch.randn(batch, channels, 2, int(low.sum()), generator=gen)
    spec[..., low] = torch.complex(coef[:, :, 0], coef[:, :, 1])
    x = torch.fft.ifft2(spec).real
    return x / x.std(dim=(-2, -1), keepdim=True)


def tiny(in_ch: int, out_ch: int, heads: int, num_levels: int) -> UNetConfig:
    return UNetConfig(in_ch, out_ch, grid=GRID, hidden=16, channel_mults=(1, 2),
                      blocks_per_level=1, attention_levels=(), attention_heads=2, heads=heads,
                      head_classes=num_levels + 1, head_channels=16, head_hidden=64)


# ------------------------------------------------------------------------------ level draws
def test_level_draws_are_reproducible_and_cover_the_range():
    a = losses.draw_levels(4000, 10, 0.0, torch.Generator().manual_seed(0))
    b = losses.draw_levels(4000, 10, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.int64
    counts = torch.bincount(a, minlength=11)
    assert counts.numel() == 11 and counts.min() > 4000 / 11 * 0.75     # 0..N, roughly uniform
    with pytest.raises(ConfigError):
        losses.draw_levels(4, 10, -0.1)


def test_biased_level_draw_follows_the_exponential_law():
    n = losses.draw_levels(40_000, 1000, 0.01, torch.Generator().manual_seed(1))
    norm = 1 - math.exp(-0.01 * 1001)
    for cut in (10, 100, 300):
        expected = (1 - math.exp(-0.01 * cut)) / norm
        assert (n < cut).float().mean().item() == pytest.approx(expected, abs=0.01)
    assert n.max() <= 1000 and n.min() == 0


def test_draws_shapes_and_independence():
    gen = torch.Generator().manual_seed(2)
    d = losses.draw_refiner(torch.Size((64, 3, 2, 8, 8)), 1000, 0.0, gen)
    assert d["eps_y"].shape == d["eps_x"].shape == (64, 2, 8, 8)
    assert d["n_y"].shape == d["n_x"].shape == (64,)
    assert not torch.equal(d["n_y"], d["n_x"]) and not torch.equal(d["eps_y"], d["eps_x"])
    t = losses.draw_thermalizer(torch.Size((5, 1, 2, 8, 8)), 100, 0.0, gen)
    assert t["eps"].shape == (5, 2, 8, 8) and t["n"].shape == (5,)


# ---------------------------------------------------------------------------------- wiring
class OracleRefiner(torch.nn.Module):
    """Checks its inputs are the noised frames and answers with the true noise and levels."""

    def __init__(self, schedule, frames, draws, num_levels):
        super().__init__()
        self.s, self.f, self.d, self.classes = schedule, frames, draws, num_levels + 1

    def forward(self, long, y, x):
        torch.testing.assert_close(long, self.f[:, 0])
        torch.testing.assert_close(y, self.s.q_sample(self.f[:, 1], self.d["n_y"], self.d["eps_y"]))
        torch.testing.assert_close(x, self.s.q_sample(self.f[:, 2], self.d["n_x"], self.d["eps_x"]))
        one_hot = torch.nn.functional.one_hot
        return RefinerOutput(self.d["eps_y"], self.d["eps_x"],
                             50.0 * one_hot(self.d["n_y"], self.classes).float(),
                             50.0 * one_hot(self.d["n_x"], self.classes).float())


def test_refiner_loss_wiring_with_an_oracle():
    sched, gen = CosineSchedule(30), torch.Generator().manual_seed(3)
    frames = smooth_fields(8, 3, gen).reshape(8, 3, 1, GRID, GRID)
    draws = losses.draw_refiner(frames.shape, 30, 0.0, gen)
    loss, parts = losses.refiner_loss(OracleRefiner(sched, frames, draws, 30), sched, frames, draws)
    assert loss.item() < 1e-6 and parts["mse"] == 0
    assert parts["acc_x"] == parts["acc_y"] == 1.0
    # swapping the draws of y and x must be caught by the losses' pairing
    swapped = {"n_y": draws["n_x"], "n_x": draws["n_y"], "eps_y": draws["eps_x"],
               "eps_x": draws["eps_y"]}
    oracle = OracleRefiner(sched, frames, draws, 30)
    with pytest.raises(AssertionError):
        losses.refiner_loss(oracle, sched, frames, swapped)


# ------------------------------------------------------------------------- toy trainings
def train(model, step_loss, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    history = []
    for step in range(steps):
        loss, parts = step_loss(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(parts)
    return history


COARSE = torch.tensor([0, 200, 400, 600, 800])   # levels of an N = 1000 schedule; chance 1/5


def coarse_levels(draws, gen):
    """Replace every level draw by one of the COARSE levels (the heads still see N + 1 classes)."""
    batch = draws["eps_x" if "eps_x" in draws else "eps"].shape[0]
    return {k: COARSE[torch.randint(len(COARSE), (batch,), generator=gen)] if k.startswith("n")
            else v for k, v in draws.items()}


def test_refiner_learns_noise_and_levels_on_toy_fields():
    """100 AdamW steps on smooth fields: ε-MSE falls and both heads beat chance (0.2) clearly."""
    torch.manual_seed(4)
    sched = CosineSchedule(1000)
    model = Refiner(tiny(3, 2, 2, 1000))

    def batch(gen, size=32):
        y0 = smooth_fields(size, 1, gen)
        frames = torch.stack([smooth_fields(size, 1, gen), y0, y0.roll(1, dims=-1)], dim=1)
        return frames, coarse_levels(losses.draw_refiner(frames.shape, 1000, 0.0, gen), gen)

    def step_loss(step):
        frames, draws = batch(torch.Generator().manual_seed(100 + step))
        return losses.refiner_loss(model, sched, frames, draws, ce_weight=0.1)

    history = train(model, step_loss, 100, 2e-3)
    with torch.no_grad():
        frames, draws = batch(torch.Generator().manual_seed(99_999), size=256)
        _, held_out = losses.refiner_loss(model, sched, frames, draws)
    first = sum(h["mse"] for h in history[:5]) / 5
    print(f"\nrefiner toy: ε-MSE {first:.3f} → {held_out['mse']:.3f}; held-out level accuracy "
          f"y {held_out['acc_y']:.2f}, x {held_out['acc_x']:.2f} (chance {1 / len(COARSE):.2f})")
    assert held_out["mse"] < 0.6 * first
    assert min(held_out["acc_x"], held_out["acc_y"]) > 0.35


def test_thermalizer_learns_noise_and_level_on_toy_fields():
    torch.manual_seed(5)
    sched = CosineSchedule(1000)
    model = Thermalizer(tiny(1, 1, 1, 1000))

    def batch(gen, size=32):
        frames = smooth_fields(size, 1, gen)[:, None]
        return frames, coarse_levels(losses.draw_thermalizer(frames.shape, 1000, 0.0, gen), gen)

    def step_loss(step):
        frames, draws = batch(torch.Generator().manual_seed(200 + step))
        return losses.thermalizer_loss(model, sched, frames, draws)

    history = train(model, step_loss, 60, 2e-3)
    with torch.no_grad():
        frames, draws = batch(torch.Generator().manual_seed(99_998), size=256)
        _, held_out = losses.thermalizer_loss(model, sched, frames, draws)
    first = sum(h["mse"] for h in history[:5]) / 5
    print(f"\nthermalizer toy: ε-MSE {first:.3f} → {held_out['mse']:.3f}; held-out level accuracy "
          f"{held_out['acc']:.2f} (chance {1 / len(COARSE):.2f})")
    assert held_out["mse"] < 0.6 * first and held_out["acc"] > 0.35


def test_emulator_learns_toy_linear_dynamics():
    """x_{t+1} = 0.9 · x_t shifted one pixel; 3-step unrolled loss, 40 AdamW steps."""
    torch.manual_seed(6)
    model = Emulator(tiny(1, 1, 0, 1000))

    def step_loss(step):
        x = smooth_fields(8, 1, torch.Generator().manual_seed(300 + step))
        window = torch.stack([0.9 ** t * x.roll(t, dims=-1) for t in range(4)], dim=1)
        return losses.emulator_loss(model, window)

    history = train(model, step_loss, 40, 2e-3)
    first, last = history[0]["mse"], sum(h["mse"] for h in history[-5:]) / 5
    print(f"\nemulator toy: unrolled MSE {first:.4f} → {last:.4f}")
    assert last < 0.2 * first
    with pytest.raises(ValueError, match="k ≥ 1"):
        losses.emulator_loss(model, torch.randn(2, 1, 1, GRID, GRID))
