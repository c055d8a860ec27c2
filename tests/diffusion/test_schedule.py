"""Cosine DDPM schedule: tables against a scalar float64 closed form, and the two steps."""

import math

import pytest
import torch

from sns_engine.config import ConfigError
from sns_engine.diffusion.schedule import TABLES, CosineSchedule


def closed_form(num_levels: int, s: float = 0.008, max_beta: float = 0.999) -> dict[str, list]:
    """The tables level by level with Python floats (an independent code path)."""
    def f(n):
        return math.cos((n / num_levels + s) / (1 + s) * math.pi / 2) ** 2

    betas, alpha_bar = [0.0], [1.0]
    for n in range(1, num_levels + 1):
        betas.append(min(1 - f(n) / f(n - 1), max_beta))
        alpha_bar.append(alpha_bar[-1] * (1 - betas[-1]))
    sigma, eps_coef = [0.0], [0.0]
    for n in range(1, num_levels + 1):
        sigma.append(math.sqrt(betas[n] * (1 - alpha_bar[n - 1]) / (1 - alpha_bar[n])))
        eps_coef.append(betas[n] / (math.sqrt(1 - alpha_bar[n]) * math.sqrt(1 - betas[n])))
    return {"f": [f(n) / f(0) for n in range(num_levels + 1)], "betas": betas,
            "alpha_bar": alpha_bar, "sigma": sigma, "eps_coef": eps_coef,
            "recip_sqrt_alpha": [1 / math.sqrt(1 - b) for b in betas]}


@pytest.mark.parametrize("num_levels", [10, 1000])
def test_tables_match_closed_form(num_levels):
    sched, ref = CosineSchedule(num_levels), closed_form(num_levels)
    for name in TABLES:
        table = getattr(sched, name)
        assert table.shape == (num_levels + 1,) and table.dtype == torch.float32, name
    for name in ("betas", "alpha_bar", "sigma", "eps_coef", "recip_sqrt_alpha"):
        expected = torch.tensor(ref[name], dtype=torch.float64)
        torch.testing.assert_close(getattr(sched, name).double(), expected, rtol=2e-6, atol=1e-7,
                                   msg=name)
    torch.testing.assert_close(sched.sqrt_alpha_bar.double() ** 2, sched.alpha_bar.double())
    torch.testing.assert_close(sched.sqrt_one_minus_alpha_bar.double() ** 2,
                               1 - sched.alpha_bar.double(), atol=1e-6, rtol=1e-6)
    # where no beta was clipped, the cumulative product is the cosine law itself
    clipped = [n for n, b in enumerate(ref["betas"]) if b >= 0.999]
    assert clipped == [num_levels]
    torch.testing.assert_close(sched.alpha_bar[:num_levels].double(),
                               torch.tensor(ref["f"][:num_levels], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)


def test_level_zero_and_one_conventions():
    sched = CosineSchedule(1000)
    assert sched.alpha_bar[0] == 1 and sched.betas[0] == 0
    assert sched.sigma[0] == 0 and sched.sigma[1] == 0 and sched.sigma[2] > 0
    assert sched.recip_sqrt_alpha[0] == 1 and sched.eps_coef[0] == 0
    assert (sched.alpha_bar[1:] < sched.alpha_bar[:-1]).all()        # strictly decreasing
    assert 0 < sched.alpha_bar[-1] < 1e-6 and sched.betas.max() == pytest.approx(0.999)


def test_invalid_arguments():
    for kwargs in ({"num_levels": 0}, {"s": 0.0}, {"max_beta": 1.0}, {"max_beta": 0.0}):
        with pytest.raises(ConfigError):
            CosineSchedule(**kwargs)
    sched = CosineSchedule(10)
    with pytest.raises(ValueError, match="one level per sample"):
        sched.q_sample(torch.randn(4, 1, 3, 3), torch.ones(3, dtype=torch.long),
                       torch.randn(4, 1, 3, 3))


def test_reverse_step_at_level_one_recovers_x0():
    sched, gen = CosineSchedule(1000), torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(5, 2, 8, 8, generator=gen) for _ in range(3))
    n = torch.ones(5, dtype=torch.long)
    x1 = sched.q_sample(x0, n, eps)
    assert not torch.allclose(x1, x0)
    torch.testing.assert_close(sched.reverse_step(x1, eps, n, z), x0, rtol=0, atol=2e-5)


def test_reverse_step_with_true_noise_is_posterior_mean():
    """x_{n−1} = μ̃(x_n, x0) + σ_n z, μ̃ = √ᾱ_{n−1}β_n/(1−ᾱ_n)·x0 + √α_n(1−ᾱ_{n−1})/(1−ᾱ_n)·x_n."""
    sched, ref = CosineSchedule(1000), closed_form(1000)
    gen = torch.Generator().manual_seed(1)
    n = torch.tensor([2, 17, 250, 640, 999, 1000])
    x0, eps, z = (torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    xn = sched.q_sample(x0.float(), n, eps.float())
    got = sched.reverse_step(xn, eps.float(), n, z.float()).double()
    for i, level in enumerate(n.tolist()):
        ab, ab_prev = ref["alpha_bar"][level], ref["alpha_bar"][level - 1]
        beta = ref["betas"][level]
        x_n = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        mean = (math.sqrt(ab_prev) * beta / (1 - ab) * x0[i]
                + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_n)
        expected = mean + ref["sigma"][level] * z[i]
        # the division by √α_N ≈ 0.03 at n = N amplifies float32 rounding of x_n
        torch.testing.assert_close(got[i], expected, rtol=0, atol=1e-4 if level == 1000 else 2e-5)


def test_noise_ignored_at_levels_zero_and_one_and_level_zero_is_identity():
    sched, gen = CosineSchedule(1000), torch.Generator().manual_seed(2)
    x, eps, z1, z2 = (torch.randn(4, 1, 6, 6, generator=gen) for _ in range(4))
    n = torch.tensor([0, 1, 0, 1])
    a, b = sched.reverse_step(x, eps, n, z1), sched.reverse_step(x, eps, n, z2)
    assert torch.equal(a, b)
    assert torch.equal(a[n == 0], x[n == 0])
    assert torch.equal(sched.q_sample(x, torch.zeros(4, dtype=torch.long), eps), x)
    n3 = torch.tensor([3, 3, 3, 3])
    assert not torch.allclose(sched.reverse_step(x, eps, n3, z1),
                              sched.reverse_step(x, eps, n3, z2))


def test_per_sample_levels_match_one_by_one_and_broadcast():
    sched, gen = CosineSchedule(100), torch.Generator().manual_seed(3)
    x, eps, z = (torch.randn(5, 2, 4, 4, generator=gen) for _ in range(3))
    n = torch.tensor([0, 1, 7, 50, 100])
    batched = sched.reverse_step(x, eps, n, z)
    noised = sched.q_sample(x, n, eps)
    for i in range(5):
        one = n[i:i + 1]
        assert torch.equal(batched[i:i + 1], sched.reverse_step(x[i:i + 1], eps[i:i + 1], one,
                                                                z[i:i + 1]))
        assert torch.equal(noised[i:i + 1], sched.q_sample(x[i:i + 1], one, eps[i:i + 1]))
    # a single level (0-d or (1,)) applies to the whole batch
    same = torch.full((5,), 7)
    assert torch.equal(sched.q_sample(x, torch.tensor(7), eps), sched.q_sample(x, same, eps))
    assert torch.equal(sched.q_sample(x, torch.tensor([7]), eps), sched.q_sample(x, same, eps))


def test_to_device_copies_tables():
    sched = CosineSchedule(20)
    moved = sched.to("meta")
    assert all(getattr(moved, name).device.type == "meta" for name in TABLES)
    assert sched.device.type == "cpu" and moved.num_levels == 20 and "meta" in repr(moved)
