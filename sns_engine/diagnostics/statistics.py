"""Statistics of fields and trajectories, batched in torch: Wasserstein-1 distance
of marginal distributions, autocorrelation and decorrelation time, rate of change, stability time
and survival.

Trajectories are (B, T, C, H, W): members, time, channel, y, x. Time follows the stores: entry t of
a trajectory (or of a per-snapshot error) lies t + 1 intervals dt after the initial condition.
"""

from __future__ import annotations

import math

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
