"""Metrics of an ensemble store against solver data, per time window.

The reference is the solver store's invariant measure (all its trajectories and times): its mean
spectrum, its value distribution per channel, its autocorrelation. For each window of the
ensemble's time axis the report holds the relative error of the ensemble-mean spectrum, the
Wasserstein-1 distance of each channel's marginal PDF, the RMS rate of change and the share of
members flagged. Over the whole run: autocorrelation and decorrelation time (ensemble vs solver),
per-member stability time (first snapshot whose own spectrum error exceeds `threshold`, or the
step it was flagged) with its survival curve, and histograms of estimated levels and moves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sns_engine.data.store import StoreError, TrajectoryStore
from sns_engine.diagnostics import spectra, statistics


def field_spectra(store: TrajectoryStore, fields: torch.Tensor) -> dict[str, torch.Tensor]:
    """Isotropic energy spectra of (…, C, H, W) fields of `store`'s system, one per curve name;
    the wavenumbers are under key "k". Kolmogorov: KE from vorticity; QG: KE per layer. Only
    shells inside the inscribed circle (k ≤ grid/2 · dk) are kept: the corner shells are partly
    empty, and their tiny energies would dominate relative errors."""
    spec = store.spec
    fields = fields.double()
    if spec.system == "kolmogorov":
        k, e = spectra.energy_spectrum(fields[..., 0, :, :], length=spec.domain_length)
        curves = {"energy": e}
    elif spec.system == "qg":
        k, e = spectra.qg_layer_energy_spectra(fields, **qg_inversion(spec.params))
        curves = {"energy_upper": e[..., 0, :], "energy_lower": e[..., 1, :]}
    else:
        raise StoreError(f"no spectra for system {spec.system!r}")
    keep = k <= (spec.grid // 2) * (2 * math.pi / spec.domain_length) + 1e-9
    return {"k": k[keep], **{name: value[..., keep] for name, value in curves.items()}}


def qg_inversion(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `spectra.qg_layer_energy_spectra` from a QG store's parameters."""
    keys = ("length", "f1", "f2")
    missing = [k for k in keys if k not in params.get("inversion", {})]
    if missing:
        raise StoreError(f"QG store parameters lack the PV inversion entries {missing}")
    return {k: params["inversion"][k] for k in keys}


def _mean_spectra(store: TrajectoryStore, trajectories, times) -> dict[str, torch.Tensor]:
    """Spectra averaged over the given trajectories and times, one trajectory at a time."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    for i in trajectories:
        fields = torch.from_numpy(np.asarray(store.fields[i, times]))
        curves = field_spectra(store, fields)
        for name, value in curves.items():
            total[name] = value if name == "k" else total.get(name, 0) + value.sum(0)
        count += fields.shape[0]
    return {n: v if n == "k" else v / count for n, v in total.items()}


def _significant_shells(curves: dict[str, torch.Tensor], floor: float = 1e-6) -> dict[str, torch.Tensor]:
    """Keep the shells up to the last one where every reference curve is above `floor` × its peak:
    beyond, the solver's dealiasing/filtering leaves round-off-level energy whose relative error
    would swamp the metric."""
    ok = torch.stack([v >= floor * v.max() for n, v in curves.items() if n != "k"]).all(0)
    last = int(ok.nonzero().max()) + 1 if ok.any() else len(ok)
    return {n: v[..., :last] for n, v in curves.items()}


def _subsample(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def evaluate(ensemble: str | Path, reference: str | Path, windows: int = 4, threshold: float = 1.0,
             max_lag: int = 20, sample: int = 64) -> dict[str, Any]:
    """Evaluate the ensemble store against the solver store; returns a JSON-able report.

    `sample` bounds the reference snapshots read per trajectory (memory and time stay small).
    The solver's autocorrelation is taken at the ensemble's lag times (every `save_every`-th
    reference snapshot); it is left out when the ensemble's interval is not a whole number of
    reference intervals."""
    ens, ref = TrajectoryStore(ensemble), TrajectoryStore(reference)
    for key in ("system", "grid", "channels"):
        if getattr(ens.spec, key) != getattr(ref.spec, key):
            raise StoreError(f"{ensemble} has {key}={getattr(ens.spec, key)!r} but the reference "
                             f"{reference} has {getattr(ref.spec, key)!r}")
    if windows <= 0:
        raise ValueError(f"windows must be positive, got {windows}")
    n_ref, t_ref = ref.spec.trajectories, ref.spec.snapshots
    ref_times = _subsample(t_ref, sample)
    ref_spectra = _significant_shells(_mean_spectra(ref, range(n_ref), ref_times))
    ref_values = torch.from_numpy(np.asarray(ref.fields[:, ref_times])).double()
    n, t = ens.spec.trajectories, ens.spec.snapshots
    dt = ens.spec.snapshot_dt
    flags = np.asarray(ens.root["flags"][:]) if "flags" in ens.root else np.zeros(n, int)
    flagged_at = (np.asarray(ens.root["flagged_at"][:]) if "flagged_at" in ens.root
                  else np.full(n, -1))

    report: dict[str, Any] = {"ensemble": str(ensemble), "reference": str(reference),
                              "members": n, "snapshots": t, "snapshot_dt": dt, "windows": []}
    member_error = np.zeros((n, t))
    curve_names = [c for c in ref_spectra if c != "k"]
    bounds = np.linspace(0, t, min(windows, t) + 1).round().astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        data = torch.from_numpy(np.asarray(ens.fields[:, lo:hi])).double()
        curves = {k: v[..., :len(ref_spectra["k"])] for k, v in field_spectra(ens, data).items()}
        errors = {}
        for name in curve_names:
            per_snapshot = spectra.relative_spectrum_error(curves[name], ref_spectra[name])
            member_error[:, lo:hi] = np.maximum(member_error[:, lo:hi], per_snapshot.numpy())
            errors[name] = float(spectra.relative_spectrum_error(
                curves[name].mean(dim=(0, 1)), ref_spectra[name]))
        w1 = [float(statistics.wasserstein1(data[:, :, c], ref_values[:, :, c]))
              for c in range(ens.spec.channels)]
        roc = statistics.rate_of_change(data) if hi - lo > 1 else torch.zeros(1)
        report["windows"].append({
            "time": [lo * dt, hi * dt], "spectrum_error": errors, "w1": w1,
            "rate_of_change": float(roc.mean()),
            "flagged": float(np.mean((flags != 0) & (flagged_at >= 0) & (flagged_at < hi))),
            "mean_spectra": {k: v.mean(dim=(0, 1)).tolist() for k, v in curves.items() if k != "k"},
        })
    report["k"] = ref_spectra["k"].tolist()
    report["reference_spectra"] = {k: v.tolist() for k, v in ref_spectra.items() if k != "k"}

    stable = np.where(np.isfinite(member_error), member_error, np.inf)
    times = statistics.stability_time(torch.from_numpy(stable), threshold, dt).numpy()
    step_dt = dt / ens.root.attrs.get("rollout", {}).get("save_every", 1)
    flagged_time = np.where(flagged_at >= 0, (flagged_at + 1) * step_dt, np.inf)
    times = np.minimum(times, flagged_time)
    horizon = np.linspace(0, t * dt, 21)
    report["stability"] = {
        "threshold": threshold,
        "times": [None if math.isinf(x) else float(x) for x in times],
        "median": _finite_or_none(float(np.median(times))),
        "survival": {"time": horizon.tolist(), "fraction": statistics.survival_curve(
            torch.from_numpy(times), torch.from_numpy(horizon)).tolist()},
        "survival_at_horizon": float(np.mean(np.isinf(times))),
    }
    stride = round(dt / ref.spec.snapshot_dt)  # reference snapshots per saved ensemble state
    aligned = stride >= 1 and math.isclose(stride * ref.spec.snapshot_dt, dt, rel_tol=1e-6)
    lags = min(max_lag, t - 1, (t_ref - 1) // stride) if aligned else 0
    if lags >= 1:  # both autocorrelations at the ensemble's lag times
        acf_ens = statistics.autocorrelation(torch.from_numpy(np.asarray(ens.fields[:])), lags)
        ref_window = np.asarray(ref.fields[:, :min(t_ref, stride * max(4 * lags, t)):stride])
        acf_ref = statistics.autocorrelation(torch.from_numpy(ref_window), lags)
        report["autocorrelation"] = {
            "lag_time": (np.arange(lags + 1) * dt).tolist(), "ensemble": acf_ens.tolist(),
            "reference": acf_ref.tolist(),
            "decorrelation_time": {
                "ensemble": _finite_or_none(statistics.decorrelation_time(acf_ens, dt)),
                "reference": _finite_or_none(statistics.decorrelation_time(acf_ref, dt)),
            }}
    if "levels" in ens.root:
        levels = np.asarray(ens.root["levels"][:])
        moves = np.asarray(ens.root["moves"][:])
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
