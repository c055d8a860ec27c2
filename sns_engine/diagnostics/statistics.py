"""Statistics of fields and trajectories, batched in torch: Wasserstein-1 distance
of marginal distributions, autocorrelation and decorrelation time, rate of change, stability time
and survival; a paired sign test of per-member values and a trend test of a time series.

Trajectories are (B, T, C, H, W): members, time, channel, y, x. Time follows the stores: entry t of
a trajectory (or of a per-snapshot error) lies t + 1 intervals dt after the initial condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sns_engine.diagnostics.spectra import DiagnosticsError, require_float


def wasserstein1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wasserstein-1 distance between the empirical distributions of all values of `a` and of `b`
    (any shapes and sizes, same device): W1 = ∫₀¹ |F_a⁻¹(u) − F_b⁻¹(u)| du, exact.

    The empirical quantile functions are step functions with steps at i/n and j/m; on each
    interval between consecutive steps of either both are constant, so the integral is a finite
    sum over n + m intervals (equal sizes: the mean |a₍ᵢ₎ − b₍ᵢ₎| of the sorted values)."""
    require_float("a", a)
    require_float("b", b)
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        raise DiagnosticsError(f"wasserstein1 needs two non-empty tensors on one device, got "
                               f"{tuple(a.shape)} on {a.device} and {tuple(b.shape)} on {b.device}")
    x, y = a.flatten().sort().values, b.flatten().sort().values
    n, m = x.numel(), y.numel()
    # the steps of both quantile functions, in units of 1/(n·m): integers, so the merge is exact
    steps = torch.cat((torch.arange(n + 1, device=x.device) * m,
                       torch.arange(m + 1, device=x.device) * n)).unique()
    left, width = steps[:-1], steps.diff()
    gap = (x[left // m].double() - y[left // n].double()).abs()
    return ((gap * width).sum() / (n * m)).to(torch.promote_types(a.dtype, b.dtype))


def autocorrelation(traj: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Spatio-temporal autocorrelation C(τ), τ = 0 … max_lag, of trajectories (B, T, C, H, W).

    Anomalies x' = x − x̄ remove the climatological mean field x̄(c, y, x), the mean over members
    and times; each channel's anomalies are divided by their standard deviation (over members,
    times and pixels) so channels weigh equally. C(τ) is the mean over channels of
    ⟨x'_t x'_{t+τ}⟩, averaged over every member, pixel and pair of times τ apart: C(0) = 1.
    """
    require_float("traj", traj)
    if traj.ndim != 5:
        raise DiagnosticsError(f"traj must be (B, T, C, H, W), got shape {tuple(traj.shape)}")
    t = traj.shape[1]
    if not 0 <= max_lag < t:
        raise DiagnosticsError(f"max_lag must lie in [0, T - 1] = [0, {t - 1}], got {max_lag}; "
                               "lower it or pass longer trajectories")
    anomaly = traj - traj.mean(dim=(0, 1), keepdim=True)
    std = anomaly.square().mean(dim=(0, 1, 3, 4), keepdim=True).sqrt()
    if (std == 0).any():
        flat = torch.nonzero(std.flatten() == 0).flatten().tolist()
        raise DiagnosticsError(f"channels {flat} of traj are constant in time and over members; "
                               "their autocorrelation is undefined: drop them")
    x = anomaly / std
    return torch.stack([(x[:, :t - lag] * x[:, lag:]).mean(dim=(0, 1, 3, 4)).mean()
                        for lag in range(max_lag + 1)])


def decorrelation_time(acf: torch.Tensor, dt: float, threshold: float = math.exp(-1)) -> float:
    """The lag time at which the autocorrelation `acf` (lags 0, dt, 2dt, …) first falls to
    `threshold`, linearly interpolated between samples; inf if it never does, nan if acf has nans.
    """
    if acf.ndim != 1 or acf.numel() == 0:
        raise DiagnosticsError(f"acf must be a 1-D tensor over lags, got shape {tuple(acf.shape)}")
    values = acf.double().cpu()
    if torch.isnan(values).any():
        return math.nan
    below = torch.nonzero(values <= threshold).flatten()
    if below.numel() == 0:
        return math.inf
    i = int(below[0])
    if i == 0:
        return 0.0
    before, after = float(values[i - 1]), float(values[i])
    return dt * (i - 1 + (before - threshold) / (before - after))


def rate_of_change(traj: torch.Tensor) -> torch.Tensor:
    """RMS over channels and pixels of x_{t+1} − x_t for trajectories (B, T, C, H, W) (any
    trailing dims): (B, T − 1), per snapshot interval (not divided by dt)."""
    require_float("traj", traj)
    if traj.ndim < 3 or traj.shape[1] < 2:
        raise DiagnosticsError(f"traj must be (B, T, C, H, W) with T ≥ 2, got shape "
                               f"{tuple(traj.shape)}")
    return traj.diff(dim=1).square().flatten(2).mean(-1).sqrt()


def stability_time(errors: torch.Tensor, threshold: float, dt: float) -> torch.Tensor:
    """Per member, the first time its error (B, T) exceeds `threshold` (a nan error counts as
    exceeding: the member blew up); entry t is at time (t + 1)·dt, inf if never. Returns (B,)."""
    if errors.ndim != 2 or errors.shape[1] == 0:
        raise DiagnosticsError(f"errors must be (B, T) with T ≥ 1, got shape {tuple(errors.shape)}")
    exceeded = (errors > threshold) | torch.isnan(errors)
    first = exceeded.int().argmax(dim=1)  # the first True; 0 when there is none
    dtype = errors.dtype if errors.is_floating_point() else torch.float64
    times = (first + 1).to(dtype) * dt
    return torch.where(exceeded.any(dim=1), times, math.inf)


def survival_curve(stability_times: torch.Tensor, horizon_times: torch.Tensor) -> torch.Tensor:
    """Fraction of members whose stability time exceeds each horizon time: (M,) for times (M,)."""
    if stability_times.ndim != 1 or stability_times.numel() == 0:
        raise DiagnosticsError(f"stability_times must be a non-empty (B,) tensor, got shape "
                               f"{tuple(stability_times.shape)}")
    dtype = stability_times.dtype if stability_times.is_floating_point() else torch.float64
    horizon = horizon_times.to(stability_times.device)
    return (stability_times[None, :] > horizon.reshape(-1, 1)).to(dtype).mean(dim=1)


def sign_test(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float]:
    """Paired sign test of per-member values a_i against b_i (member i of both started from the
    same initial state): wins (a_i < b_i: lower is better, as for errors; negate both for
    higher-is-better values such as stability times), losses (a_i > b_i), ties, and the exact
    two-sided binomial p-value of the wins among the untied pairs under p = ½:
    min(1, 2·P(X ≤ min(wins, losses))), X ~ Binomial(wins + losses, ½); 1 without untied pairs.
    None counts as +inf (a stability time beyond the horizon)."""
    x, y = (np.array([math.inf if v is None else v for v in s], dtype=np.float64) for s in (a, b))
    if x.ndim != 1 or x.shape != y.shape:
        raise DiagnosticsError(f"a and b must be 1-D and paired, got shapes {x.shape} and {y.shape}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise DiagnosticsError("a and b must not hold nan; map a failed member to +inf (worst) first")
    wins, losses = int((x < y).sum()), int((x > y).sum())
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return {"wins": wins, "losses": losses, "ties": len(x) - n,
            "p_value": min(1.0, 2 * tail / 2**n)}


def stationarity(series: Sequence[float] | np.ndarray, times: Sequence[float] | np.ndarray | None = None,
                 ) -> dict[str, float]:
    """Least-squares linear trend of a time series (e.g. a reference's kinetic energy), to check
    that it has none. `times` defaults to 0, 1, 2, ….

    Returns slope (per unit time), its standard error, t = slope/stderr, correlation_time (of the
    residuals, in samples) and relative_change (slope × time span / mean: the trend's change over
    the series relative to its level). Consecutive residuals of a physical series are correlated,
    which makes the plain standard error too small: its variance is multiplied by the integrated
    correlation time τ = 1 + 2 Σ_{l ≥ 1} ρ_l (ρ_l the residuals' autocorrelation at lag l, summed
    while positive; τ ≥ 1), i.e. n/τ effective samples. On a short series ρ_l is biased low, so
    |t| is still somewhat overstated: read it with relative_change. |t| ≲ 2: no significant
    trend."""
    y = np.asarray(series, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if y.ndim != 1 or y.size < 3 or x.shape != y.shape:
        raise DiagnosticsError(f"series must be 1-D with at least 3 values and times of its shape, "
                               f"got {y.shape} and {x.shape}")
    if not (np.isfinite(y).all() and np.isfinite(x).all()):
        raise DiagnosticsError("series and times must be finite")
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        raise DiagnosticsError("times must not all be equal")
    slope = float(xc @ y) / sxx
    residual = y - y.mean() - slope * xc
    rss = float(residual @ residual)
    tau = 1.0
    for lag in range(1, y.size - 1):
        rho = float(residual[:-lag] @ residual[lag:]) / rss if rss > 0 else 0.0
        if rho <= 0:
            break
        tau += 2 * rho
    stderr = math.sqrt(rss / (y.size - 2) / sxx * tau)
    t = slope / stderr if stderr > 0 else (0.0 if slope == 0 else math.copysign(math.inf, slope))
    mean = float(y.mean())
    return {"slope": slope, "stderr": stderr, "t": t, "correlation_time": tau,
            "relative_change": slope * float(x.max() - x.min()) / mean if mean != 0 else math.inf}
