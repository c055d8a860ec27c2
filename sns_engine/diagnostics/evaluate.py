"""Metrics of an ensemble store against solver data, per time window, with bootstrap intervals.

The reference is the solver store's invariant measure (all its trajectories, up to `sample`
snapshots of each): its mean spectrum, its value distribution per channel, its kinetic energy, its
autocorrelation. A solver store may stand in for the ensemble (no flags, levels or moves then):
evaluated like a method, a second solver run gives the metrics' floor.

Spectra are compared on the shells the solver resolves (`resolved_wavenumber`), from the first
nonzero one: beyond, its dealiasing or filter leaves partly or wholly emptied shells that an
emulator need not reproduce. The spectrum error is the symmetric `spectra.log_spectrum_error`
(mean over shells of |log(S/S_ref)|), over all of those shells and per band (`spectra.spectral_bands`:
thirds of the shells). Kinetic energy is computed directly, by Parseval: the sum of the spectrum
over every shell of the grid (corners and unresolved shells included, so energy piled up at small
scales counts), per curve (QG: per layer).

Per window of the ensemble's time axis: the spectrum error of the ensemble-mean spectrum (total
and per band), the ensemble's mean kinetic energy over the reference's, the Wasserstein-1 distance
of each channel's marginal PDF, the RMS rate of change, the share of members flagged, and a 90 %
bootstrap interval over members for each metric (`intervals`). Over the whole run: per-member
stability (the first snapshot whose own spectrum error exceeds `threshold`, or whose kinetic
energy ratio leaves `energy_bounds`, or the step it was flagged) with its survival curve and the
rule that fired; per-member values for paired tests (`statistics.sign_test`); autocorrelation and
decorrelation time (ensemble vs solver); the reference's kinetic energy over time and its trend;
histograms of estimated levels and moves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sns_engine.data.store import StoreError, StoreSpec, TrajectoryStore
from sns_engine.diagnostics import intervals, spectra, statistics

QG_FILTER_CUTOFF = 0.65 * math.pi  # pyqg's cphi: its filter acts on the modes with |k|·dx > cphi
RULES = ("energy", "spectrum", "flag")  # stability rules, in the order that settles a tie


def field_spectra(store: TrajectoryStore, fields: torch.Tensor) -> dict[str, torch.Tensor]:
    """Isotropic energy spectra of (…, C, H, W) fields of `store`'s system, one per curve name;
    the wavenumbers are under key "k". Kolmogorov: KE from vorticity; QG: KE per layer. Only
    shells inside the inscribed circle (k ≤ grid/2 · dk) are kept: the corner shells are partly
    empty."""
    spec = store.spec
    k, curves = all_shells(spec, fields)
    keep = k <= (spec.grid // 2) * (2 * math.pi / spec.domain_length) + 1e-9
    return {"k": k[keep], **{name: value[..., keep] for name, value in curves.items()}}


def qg_inversion(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `spectra.qg_layer_energy_spectra` from a QG store's parameters."""
    keys = ("length", "f1", "f2")
    missing = [k for k in keys if k not in params.get("inversion", {})]
    if missing:
        raise StoreError(f"QG store parameters lack the PV inversion entries {missing}")
    return {k: params["inversion"][k] for k in keys}


def resolved_wavenumber(spec: StoreSpec) -> float:
    """The largest wavenumber up to which the solver resolves every mode of the stored grid: the
    shells k ≤ it (shell s holds the modes with round(|k|/dk) = s) are untouched by its dealiasing
    or filter and by the output truncation.

    Kolmogorov (jax-cfd, domain 2π, dk = 1): the 2/3 rule (`brick_wall_filter_2d`) on the
    n = params["solver_grid"] grid keeps k_x from −⌈c/2⌉ to ⌊c/2⌋ − 1 and k_y up to
    ⌊2(n/2 + 1)/3⌋ − 1, c = ⌊2n/3⌋; the snapshots keep |k_x|, |k_y| ≤ grid/2 − 1
    (`spectral_downsample`). A mode of shell s has components ≤ s, so
    k_max = min(grid/2 − 1, ⌊c/2⌋ − 1)·dk; shell ⌊c/2⌋ already lost some modes.
    QG (pyqg): every step multiplies the modes with |k|·dx > cphi = 0.65π (dx = L/grid) by
    exp(−filterfac (|k|dx − cphi)⁴) (`_initialize_filter` in pyqg/model.py), so
    k_max = 0.65·(grid/2)·dk, dk = 2π/L. A shell's outer modes may pass it by < dk/2, where the
    filter is 1 − O(10⁻⁵) per step.
    """
    dk = 2 * math.pi / spec.domain_length
    if spec.system == "kolmogorov":
        if "solver_grid" not in spec.params:
            raise StoreError("Kolmogorov store parameters lack 'solver_grid', which sets the "
                             "dealiasing cutoff")
        dealiased = int(2 / 3 * spec.params["solver_grid"]) // 2 - 1  # jax-cfd's own arithmetic
        return dk * min(spec.grid // 2 - 1, dealiased)
    if spec.system == "qg":
        return QG_FILTER_CUTOFF / math.pi * (spec.grid / 2) * dk
    raise StoreError(f"no resolved wavenumber for system {spec.system!r}")


def resolved_shells(spec: StoreSpec, k: torch.Tensor) -> torch.Tensor:
    """Mask of the shell wavenumbers `k` the solver resolves (`resolved_wavenumber`), k = 0 left
    out."""
    dk = 2 * math.pi / spec.domain_length
    return (k > 0) & (k <= resolved_wavenumber(spec) + 1e-9 * dk)


def all_shells(spec: StoreSpec, fields: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shell wavenumbers (K,) and energy spectra (…, K) over every shell of the grid, per curve."""
    fields = fields.double()
    if spec.system == "kolmogorov":
        k, e = spectra.energy_spectrum(fields[..., 0, :, :], length=spec.domain_length)
        return k, {"energy": e}
    if spec.system == "qg":
        k, e = spectra.qg_layer_energy_spectra(fields, **qg_inversion(spec.params))
        return k, {"energy_upper": e[..., 0, :], "energy_lower": e[..., 1, :]}
    raise StoreError(f"no spectra for system {spec.system!r}")


def subsample(n: int, most: int) -> np.ndarray:
    """At most `most` distinct indices of 0..n−1, ascending, evenly spread from 0 to n−1 (all of
    them when n ≤ most): the snapshots a reference or a figure samples."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def _errors(spectrum: torch.Tensor, reference: torch.Tensor, bands: dict[str, slice],
            ) -> dict[str, torch.Tensor]:
    """Symmetric spectrum error over all resolved shells ("all") and per band."""
    return {"all": spectra.log_spectrum_error(spectrum, reference),
            **{b: spectra.log_spectrum_error(spectrum[..., s], reference[s]) for b, s in bands.items()}}


def _worst(x: torch.Tensor) -> torch.Tensor:
    """nan → +inf: a metric of a failed (non-finite) member is the worst value."""
    return torch.nan_to_num(x, nan=math.inf, posinf=math.inf)


def evaluate(ensemble: str | Path, reference: str | Path, windows: int = 4, threshold: float = 1.0,
             max_lag: int = 20, sample: int = 64, energy_bounds: tuple[float, float] = (0.1, 10.0),
             resamples: int = 1000, seed: int = 0, atoms: int = 256,
             start: int = 0, partial: bool = False) -> dict[str, Any]:
    """Evaluate the ensemble store against the solver store; returns a JSON-able report.

    `threshold` bounds a member's per-snapshot symmetric spectrum error (mean |log| ratio over
    the resolved shells, the worst curve); `energy_bounds` its per-snapshot kinetic energy over
    the reference's mean (any curve outside: collapse or blow-up). Bootstrap intervals take
    `resamples` draws of the members (`seed`); for W1 each member's window values are summarised
    by `atoms` quantiles, the reference's by `atoms` × members (`intervals.quantile_atoms`; the
    point estimates use all values). `sample` bounds the reference snapshots read per trajectory
    (memory and time stay small). The solver's autocorrelation is taken at the ensemble's lag
    times (every `save_every`-th reference snapshot); it is left out when the ensemble's interval
    is not a whole number of reference intervals. The initial states an ensemble store holds at
    t = 0 are not evaluated; `start` skips the store's first snapshots after them (a solver
    control store holds the members' initial state first).

    An unfinished ensemble store (a rollout killed, failed or still running; `TrajectoryStore.
    incomplete`) is refused, saying how far it got; with `partial` only its written snapshots are
    evaluated (report["complete"] is False then). Solver stores are taken as they are."""
    ens, ref = TrajectoryStore(ensemble), TrajectoryStore(reference)
    missing = ens.incomplete() if ens.is_ensemble else None
    written = ens.written() if missing else ens.spec.snapshots
    if missing and not partial:
        raise StoreError(f"{missing}, or pass partial=True to evaluate the "
                         f"{written * ens.save_every} steps written")
    for key in ("system", "grid", "channels"):
        if getattr(ens.spec, key) != getattr(ref.spec, key):
            raise StoreError(f"{ensemble} has {key}={getattr(ens.spec, key)!r} but the reference "
                             f"{reference} has {getattr(ref.spec, key)!r}")
    if windows <= 0:
        raise ValueError(f"windows must be positive, got {windows}")
    low, high = energy_bounds
    if not 0 <= low < high:
        raise ValueError(f"energy_bounds must be (low, high) with 0 ≤ low < high, got {energy_bounds}")
    t_ref = ref.spec.snapshots
    ref_times = subsample(t_ref, sample)
    ref_values = torch.from_numpy(np.asarray(ref.fields[:, ref_times])).double()
    k_all, ref_curves = all_shells(ref.spec, ref_values)
    dk = 2 * math.pi / ref.spec.domain_length
    keep = resolved_shells(ref.spec, k_all)
    bands = spectra.spectral_bands(int(keep.sum()))
    k = k_all[keep]
    ref_spectra = {c: v[..., keep].mean(dim=(0, 1)) for c, v in ref_curves.items()}
    empty = [c for c, v in ref_spectra.items() if not (torch.isfinite(v) & (v > 0)).all()]
    if empty:
        raise StoreError(f"the reference {reference} has no energy in some resolved shell of "
                         f"{empty}; is it a solver store?")
    ref_energy = {c: v.sum(-1) * dk for c, v in ref_curves.items()}  # (n_ref, T_s)
    ref_energy_mean = {c: float(v.mean()) for c, v in ref_energy.items()}
    curve_names = list(ref_spectra)

    n, t = ens.spec.trajectories, written - start
    if not 0 <= start < ens.spec.snapshots:
        raise ValueError(f"start must lie in 0..{ens.spec.snapshots - 1}, got {start}")
    if t <= 0:
        raise StoreError(f"{missing}; it has no written snapshot to evaluate yet")
    dt = ens.spec.snapshot_dt
    flagged_at = ens.flagged_steps()  # in model steps, save_every of them per saved state
    save_every = ens.save_every
    first = ens.t0 + start  # index in ens.fields of the first snapshot evaluated
    draws = intervals.resample(n, resamples, seed)
    ref_atoms = [intervals.quantile_atoms(ref_values[:, :, c].reshape(1, -1), atoms * n)[0]
                 for c in range(ref.spec.channels)]

    report: dict[str, Any] = {
        "ensemble": str(ensemble), "reference": str(reference), "members": n, "snapshots": t,
        "complete": missing is None,
        "snapshot_dt": dt, "resolved_wavenumber": resolved_wavenumber(ref.spec),
        "bands": {b: [float(k[s][0]), float(k[s][-1])] for b, s in bands.items()},
        "bootstrap": {"resamples": resamples, "seed": seed, "level": intervals.LEVEL, "atoms": atoms},
        "windows": []}
    member_error = np.zeros((n, t))
    outside = np.zeros((n, t), dtype=bool)
    per_member: list[dict[str, dict[str, list[float]]]] = []  # per window: metric, curve → (n,)
    bounds = np.linspace(0, t, min(windows, t) + 1).round().astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        data = torch.from_numpy(np.asarray(ens.fields[:, first + lo:first + hi])).double()
        curves = all_shells(ens.spec, data)[1]
        resolved = {c: v[..., keep] for c, v in curves.items()}
        ratio = {c: v.sum(-1) * dk / ref_energy_mean[c] for c, v in curves.items()}  # (n, T_w)
        member_error[:, lo:hi] = torch.stack([spectra.log_spectrum_error(resolved[c], ref_spectra[c])
                                              for c in curve_names]).amax(0).numpy()
        for r in ratio.values():
            outside[:, lo:hi] |= ~((r >= low) & (r <= high)).numpy()
        member_spectra = {c: v.mean(1) for c, v in resolved.items()}  # (n, K): each member's mean
        member_energy = {c: v.mean(1) for c, v in ratio.items()}  # (n,)
        per_member.append({
            "spectrum_error": {c: _worst(spectra.log_spectrum_error(member_spectra[c], ref_spectra[c]))
                               .tolist() for c in curve_names},
            "energy_ratio": {c: _worst(v).tolist() for c, v in member_energy.items()}})
        point = {c: _errors(member_spectra[c].mean(0), ref_spectra[c], bands) for c in curve_names}
        boot = {c: _errors(intervals.resampled_means(member_spectra[c], draws), ref_spectra[c],
                           bands) for c in curve_names}
        boot_energy = {c: _worst(intervals.resampled_means(v, draws)) for c, v in member_energy.items()}
        w1, w1_interval = [], []
        for c in range(ens.spec.channels):
            values = data[:, :, c]
            w1.append(float(_worst(statistics.wasserstein1(values, ref_values[:, :, c]))))
            member_atoms = intervals.quantile_atoms(values.reshape(n, -1), atoms)
            w1_interval.append(intervals.interval(
                intervals.mixture_w1(member_atoms, draws, ref_atoms[c])))
        roc = statistics.rate_of_change(data) if hi - lo > 1 else torch.zeros(1)
        report["windows"].append({
            "time": [lo * dt, hi * dt],
            "spectrum_error": {c: float(_worst(point[c]["all"])) for c in curve_names},
            "band_error": {c: {b: float(_worst(point[c][b])) for b in bands} for c in curve_names},
            "energy_ratio": {c: float(_worst(v.mean())) for c, v in member_energy.items()},
            "w1": w1,
            "rate_of_change": float(roc.mean()),
            "flagged": float(np.mean((flagged_at >= 0) & (flagged_at < (start + hi) * save_every))),
            "mean_spectra": {c: v.mean(0).tolist() for c, v in member_spectra.items()},
            "interval": {
                "spectrum_error": {c: intervals.interval(boot[c]["all"]) for c in curve_names},
                "band_error": {c: {b: intervals.interval(boot[c][b]) for b in bands}
                               for c in curve_names},
                "energy_ratio": {c: intervals.interval(v) for c, v in boot_energy.items()},
                "w1": w1_interval},
        })
    report["k"] = k.tolist()
    report["reference_spectra"] = {c: v.tolist() for c, v in ref_spectra.items()}

    step_dt = dt / save_every
    by_rule = np.stack([
        statistics.stability_time(torch.from_numpy(outside.astype(np.float64)), 0.5, dt).numpy(),
        statistics.stability_time(torch.from_numpy(member_error), threshold, dt).numpy(),
        np.where(flagged_at >= 0, (flagged_at + 1) * step_dt, np.inf)])  # (rule, member), RULES
    times = by_rule.min(0)
    horizon = np.linspace(0, t * dt, 21)
    report["stability"] = {
        "threshold": threshold,
        "energy_bounds": [low, high],
        "times": [_finite_or_none(x) for x in times],
        "rule": [None if math.isinf(x) else RULES[i] for x, i in zip(times, by_rule.argmin(0),
                                                                     strict=True)],
        "median": _finite_or_none(float(np.median(times))),
        "survival": {"time": horizon.tolist(), "fraction": statistics.survival_curve(
            torch.from_numpy(times), torch.from_numpy(horizon)).tolist()},
        "survival_at_horizon": float(np.mean(np.isinf(times))),
    }
    report["per_member"] = {
        "last_window_spectrum_error": per_member[-1]["spectrum_error"],
        "mean_spectrum_error": {c: np.mean([w["spectrum_error"][c] for w in per_member], axis=0)
                                .tolist() for c in curve_names},
        "last_window_energy_ratio": per_member[-1]["energy_ratio"],
        "stability_time": report["stability"]["times"],
    }
    stride = round(dt / ref.spec.snapshot_dt)  # reference snapshots per saved ensemble state
    aligned = stride >= 1 and math.isclose(stride * ref.spec.snapshot_dt, dt, rel_tol=1e-6)
    lags = min(max_lag, t - 1, (t_ref - 1) // stride) if aligned else 0
    if lags >= 1:  # both autocorrelations at the ensemble's lag times
        acf_ens = statistics.autocorrelation(
            torch.from_numpy(np.asarray(ens.fields[:, first:ens.t0 + written])), lags)
        ref_window = np.asarray(ref.fields[:, :min(t_ref, stride * max(4 * lags, t)):stride])
        acf_ref = statistics.autocorrelation(torch.from_numpy(ref_window), lags)
        tau_ens = statistics.decorrelation_time(acf_ens, dt)
        tau_ref = statistics.decorrelation_time(acf_ref, dt)
        report["autocorrelation"] = {
            "lag_time": (np.arange(lags + 1) * dt).tolist(), "ensemble": acf_ens.tolist(),
            "reference": acf_ref.tolist(),
            "decorrelation_time": {"ensemble": _finite_or_none(tau_ens),
                                   "reference": _finite_or_none(tau_ref)},
            "decorrelation_ratio": _finite_or_none(tau_ens / tau_ref) if tau_ref > 0 else None,
        }
    ref_time = np.asarray(ref.root["time"][:])[ref_times]
    series = {c: v.mean(0).numpy() for c, v in ref_energy.items()}
    report["reference_energy"] = {
        "time": ref_time.tolist(), "energy": {c: v.tolist() for c, v in series.items()},
        "trend": {c: statistics.stationarity(v, ref_time) if v.size >= 3 else None
                  for c, v in series.items()}}
    if "levels" in ens.root:
        steps = written * save_every  # physical steps of the written snapshots
        levels = ens.per_step("levels")[:, :steps]
        moves = ens.per_step("moves")[:, :steps]
        report["levels"] = {name: _histogram(levels[..., i]) for i, name in enumerate(("n_x", "n_y"))}
        report["moves"] = {**_histogram(moves), "mean": float(moves[moves >= 0].mean())
                           if (moves >= 0).any() else None}
    return report


def _histogram(values: np.ndarray) -> dict[str, list[int]]:
    values = values[values >= 0]
    if values.size == 0:
        return {"value": [], "count": []}
    counts = np.bincount(values.astype(np.int64))
    nonzero = np.nonzero(counts)[0]
    return {"value": nonzero.tolist(), "count": counts[nonzero].tolist()}


def _finite_or_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)
