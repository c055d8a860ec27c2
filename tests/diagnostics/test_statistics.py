"""Statistics: W1 exact and sampled cases, AR(1) autocorrelation, rate of change, stability,
sign test and trend."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from sns_engine.diagnostics import (
    DiagnosticsError,
    autocorrelation,
    decorrelation_time,
    rate_of_change,
    stability_time,
    survival_curve,
    wasserstein1,
)
from sns_engine.diagnostics.statistics import sign_test, stationarity


def generator(seed):
    return torch.Generator().manual_seed(seed)


def tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def test_wasserstein1_identical_sets_is_zero():
    a = torch.randn(4, 3, 8, 8, generator=generator(0))
    assert wasserstein1(a, a).item() == 0
    permuted = a.flatten()[torch.randperm(a.numel(), generator=generator(1))].reshape(16, 48)
    assert wasserstein1(a, permuted).item() == 0


@pytest.mark.parametrize(("a", "b", "distance"), [
    ([0.0, 1.0], [0.5], 0.5),
    ([0.0, 1.0, 2.0], [0.0, 2.0], 1 / 3),  # quantiles differ by 1 on (1/3, 2/3)
    ([3.0, -1.0, 2.0], [0.0, 1.0, 5.0], 4 / 3),  # sorted: (|−1−0| + |2−1| + |3−5|)/3
    ([0.0], [-2.5], 2.5),
])
def test_wasserstein1_by_hand(a, b, distance):
    assert wasserstein1(tensor(a), tensor(b)).item() == pytest.approx(distance, rel=1e-15)
    assert wasserstein1(tensor(b), tensor(a)).item() == pytest.approx(distance, rel=1e-15)


@pytest.mark.parametrize(("n", "m"), [(7, 7), (50, 13), (101, 1000), (1, 37)])
def test_wasserstein1_matches_scipy(n, m):
    a = torch.randn(n, generator=generator(n), dtype=torch.float64)
    b = 0.5 + 2 * torch.rand(m, generator=generator(m), dtype=torch.float64)
    expected = wasserstein_distance(a.numpy(), b.numpy())
    assert wasserstein1(a, b).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wasserstein1_of_shifted_gaussians(dtype):
    shift = 0.7
    a = torch.randn(40, 64, 64, generator=generator(2)).to(dtype)
    b = (torch.randn(30, 64, 64, generator=generator(3)) + shift).to(dtype)
    distance = wasserstein1(a, b)
    assert distance.dtype == dtype
    # sampling error of ~10⁵ values: a few 10⁻³
    assert distance.item() == pytest.approx(shift, abs=0.02)
    assert wasserstein1(a, a + shift).item() == pytest.approx(shift, rel=1e-5)


def ar1_trajectories(rho, shape, steps, seed):
    """Stationary AR(1) per pixel: x_{t+1} = ρ x_t + √(1 − ρ²) ε, unit variance; (B, T, ...)."""
    gen = generator(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    frames = [x]
    for _ in range(steps - 1):
        x = rho * x + math.sqrt(1 - rho**2) * torch.randn(shape, generator=gen, dtype=torch.float64)
        frames.append(x)
    return torch.stack(frames, dim=1)


def test_autocorrelation_of_ar1_process():
    rho, lags = 0.8, 12
    traj = ar1_trajectories(rho, (16, 2, 8, 8), 256, seed=4)
    acf = autocorrelation(traj, lags)
    assert acf.shape == (lags + 1,) and acf.dtype == torch.float64
    assert acf[0].item() == pytest.approx(1.0, rel=1e-12)
    expected = rho ** torch.arange(lags + 1, dtype=torch.float64)
    # ~5·10⁴ effective samples per lag: statistical error ≈ 0.005
    torch.testing.assert_close(acf, expected, rtol=0, atol=0.02)


def test_autocorrelation_removes_mean_field_and_weighs_channels_equally():
    """A fixed mean pattern changes nothing; a channel 10³ times smaller counts as much."""
    fast = ar1_trajectories(0.5, (16, 1, 8, 8), 200, seed=5)
    slow = ar1_trajectories(0.9, (16, 1, 8, 8), 200, seed=6)
    lags = 6
    traj = torch.cat((fast, 1e-3 * slow), dim=2)
    acf = autocorrelation(traj, lags)
    expected = (autocorrelation(fast, lags) + autocorrelation(slow, lags)) / 2
    torch.testing.assert_close(acf, expected, rtol=1e-12, atol=1e-14)
    pattern = 5 * torch.randn(1, 1, 2, 8, 8, generator=generator(7), dtype=torch.float64)
    torch.testing.assert_close(autocorrelation(traj + pattern, lags), acf, rtol=1e-9, atol=1e-12)
    assert autocorrelation(traj.float(), lags).dtype == torch.float32


def test_decorrelation_time():
    dt = 0.25
    linear = 1 - 0.1 * torch.arange(12, dtype=torch.float64)  # crosses e⁻¹ at lag 10(1 − e⁻¹)
    assert decorrelation_time(linear, dt) == pytest.approx(dt * 10 * (1 - math.exp(-1)), rel=1e-12)
    assert decorrelation_time(linear, dt, threshold=0.5) == pytest.approx(5 * dt, rel=1e-12)
    assert decorrelation_time(tensor([1.0, 0.9, 0.8]), dt) == math.inf
    assert decorrelation_time(tensor([0.2, 0.1]), dt) == 0.0
    assert math.isnan(decorrelation_time(tensor([1.0, math.nan, 0.1]), dt))


def test_rate_of_change():
    traj = torch.randn(3, 5, 2, 6, 7, generator=generator(8), dtype=torch.float64)
    roc = rate_of_change(traj)
    assert roc.shape == (3, 4)
    for b in range(3):
        for t in range(4):
            step = traj[b, t + 1] - traj[b, t]
            expected = torch.linalg.vector_norm(step) / math.sqrt(step.numel())
            torch.testing.assert_close(roc[b, t], expected, rtol=1e-14, atol=0)
    steady = traj[:, :1] + 0.3 * torch.arange(5, dtype=torch.float64).reshape(1, 5, 1, 1, 1)
    torch.testing.assert_close(rate_of_change(steady), torch.full((3, 4), 0.3, dtype=torch.float64))


def test_stability_time_and_survival():
    errors = tensor([[0.1, 0.5, 2.0, 0.1],
                     [0.1, 0.2, 0.3, 0.4],
                     [math.nan, 0.1, 0.1, 0.1],
                     [0.3, 1.0, 1.5, math.inf]])
    times = stability_time(errors, threshold=1.0, dt=0.5)
    torch.testing.assert_close(times, tensor([1.5, math.inf, 0.5, 1.5]))
    fractions = survival_curve(times, tensor([0.0, 0.5, 1.0, 1.5, 10.0]))
    torch.testing.assert_close(fractions, tensor([1.0, 0.75, 0.75, 0.25, 0.25]))



@pytest.mark.parametrize(("wins", "losses", "ties", "p_value"), [
    (8, 0, 0, 2 / 256),                       # 2·P(X ≤ 0), X ~ B(8, ½)
    (0, 8, 3, 2 / 256),
    (7, 1, 2, 2 * (1 + 8) / 256),
    (6, 4, 0, 2 * (1 + 10 + 45 + 120 + 210) / 1024),
    (5, 5, 1, 1.0),                           # 2·P(X ≤ 5) > 1
    (0, 0, 4, 1.0),                           # all tied: no evidence
])
def test_sign_test_by_hand(wins, losses, ties, p_value):
    gen = np.random.default_rng(wins * 100 + losses * 10 + ties)
    base = gen.uniform(0.5, 2.0, wins + losses + ties)
    step = np.concatenate([-gen.uniform(0.01, 1, wins), gen.uniform(0.01, 1, losses), np.zeros(ties)])
    order = gen.permutation(base.size)
    a, b = (base + step)[order], base[order]
    result = sign_test(a.tolist(), b.tolist())
    assert (result["wins"], result["losses"], result["ties"]) == (wins, losses, ties)
    assert result["p_value"] == pytest.approx(p_value, rel=1e-14)


def test_sign_test_counts_none_as_beyond_the_horizon():
    """Stability times, higher is better: negated; None (never unstable) is +inf."""
    a, b = [None, 3.0, None, 1.0], [None, 2.0, 5.0, 4.0]
    result = sign_test([-math.inf if x is None else -x for x in a],
                       [-math.inf if x is None else -x for x in b])
    assert (result["wins"], result["losses"], result["ties"]) == (2, 1, 1)
    assert sign_test(a, b)["ties"] == 1


def test_stationarity_against_least_squares():
    gen = np.random.default_rng(11)
    times = np.sort(gen.uniform(0, 50, 40))
    series = 4.0 + 0.03 * times + gen.standard_normal(40) * 0.2
    trend = stationarity(series, times)
    design = np.stack([np.ones_like(times), times], axis=1)
    coef, rss, *_ = np.linalg.lstsq(design, series, rcond=None)
    plain = math.sqrt(rss[0] / 38 * np.linalg.inv(design.T @ design)[1, 1])
    residual = series - design @ coef
    rho = [residual[:-k] @ residual[k:] / (residual @ residual) for k in range(1, 39)]
    positive = next(i for i, r in enumerate(rho) if r <= 0)
    tau = 1 + 2 * sum(rho[:positive])
    assert trend["slope"] == pytest.approx(coef[1], rel=1e-10)
    assert trend["correlation_time"] == pytest.approx(tau, rel=1e-10)
    assert trend["stderr"] == pytest.approx(plain * math.sqrt(tau), rel=1e-10)
    assert trend["t"] == pytest.approx(coef[1] / (plain * math.sqrt(tau)), rel=1e-10)
    assert trend["relative_change"] == pytest.approx(coef[1] * (times[-1] - times[0]) / series.mean(),
                                                     rel=1e-10)


def test_stationarity_tells_a_trend_from_correlated_noise():
    exact = stationarity([3.0, 3.5, 4.0, 4.5])  # times 0, 1, 2, 3: no residual
    assert (exact["slope"], exact["stderr"], exact["t"]) == (0.5, 0.0, math.inf)
    assert exact["relative_change"] == pytest.approx(1.5 / 3.75, rel=1e-15)
    gen = np.random.default_rng(12)
    x, ar1 = 0.0, []
    for _ in range(2000):  # AR(1), ρ = 0.9: correlation time (1 + ρ)/(1 − ρ) = 19 samples
        x = 0.9 * x + math.sqrt(1 - 0.81) * gen.standard_normal()
        ar1.append(x)
    noise = stationarity(np.array(ar1) + 10)
    assert 10 < noise["correlation_time"] < 30
    assert abs(noise["t"]) < 3 and abs(noise["relative_change"]) < 0.05
    drift = stationarity(np.array(ar1) + 10 + 1e-3 * np.arange(2000))  # +2 on a mean of 11
    assert drift["t"] > 5 and drift["relative_change"] == pytest.approx(2 / 11, abs=0.03)

@pytest.mark.parametrize(("call", "message"), [
    (lambda: wasserstein1(torch.rand(3), torch.rand(0)), "non-empty"),
    (lambda: wasserstein1(torch.rand(3), torch.arange(3)), "float32 or float64"),
    (lambda: autocorrelation(torch.rand(2, 5, 1, 4), 2), r"\(B, T, C, H, W\)"),
    (lambda: autocorrelation(torch.rand(2, 5, 1, 4, 4), 5), "max_lag"),
    (lambda: autocorrelation(torch.ones(2, 5, 1, 4, 4), 1), "constant"),
    (lambda: decorrelation_time(torch.rand(2, 3), 1.0), "1-D"),
    (lambda: rate_of_change(torch.rand(2, 1, 1, 4, 4)), "T ≥ 2"),
    (lambda: stability_time(torch.rand(5), 1.0, 1.0), r"\(B, T\)"),
    (lambda: survival_curve(torch.rand(0), torch.rand(3)), "non-empty"),
    (lambda: sign_test([1.0, 2.0], [1.0]), "paired"),
    (lambda: sign_test([math.nan], [1.0]), "nan"),
    (lambda: stationarity([1.0, 2.0]), "at least 3"),
    (lambda: stationarity([1.0, 2.0, math.inf]), "finite"),
    (lambda: stationarity([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), "all be equal"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(DiagnosticsError, match=message):
        call()
