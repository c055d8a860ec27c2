"""PNG figures (matplotlib, Agg): spectra, snapshots, and an evaluation report's curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sns_engine.data.store import TrajectoryStore  # noqa: E402
from sns_engine.diagnostics.evaluate import _subsample, evaluate, field_spectra  # noqa: E402


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def spectrum(store: TrajectoryStore, out: Path, reference: TrajectoryStore | None = None,
             windows: int = 4) -> Path:
    """Energy spectra averaged over trajectories in `windows` time windows (+ a reference)."""
    t = store.spec.snapshots
    bounds = np.linspace(0, t, min(windows, t) + 1).round().astype(int)
    curves = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        idx = _subsample(hi - lo, 16) + lo
        data = torch.from_numpy(np.asarray(store.fields[:, idx]))
        s = field_spectra(store, data)
        curves.append((f"t ∈ [{lo * store.spec.snapshot_dt:.3g}, {hi * store.spec.snapshot_dt:.3g}]", s))
    names = [n for n in curves[0][1] if n != "k"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
    for ax, name in zip(axes[0], names, strict=True):
        for colour, (label, s) in zip(colours, curves, strict=True):
            k = s["k"].numpy()
            ax.loglog(k[1:], s[name].mean(dim=(0, 1)).numpy()[1:], color=colour, label=label)
        if reference is not None:
            idx = _subsample(reference.spec.snapshots, 16)
            r = field_spectra(reference, torch.from_numpy(np.asarray(reference.fields[:, idx])))
            ax.loglog(r["k"].numpy()[1:], r[name].mean(dim=(0, 1)).numpy()[1:], "k--", label="solver")
        ax.set_xlabel("wavenumber k")
        ax.set_ylabel(f"E(k) [{name}]")
        ax.set_title(f"{store.spec.system} {name} spectrum")
        ax.legend(fontsize=7)
    return _save(fig, out)


def snapshots(store: TrajectoryStore, out: Path, members: int = 4, times: int = 6) -> Path:
    """A grid of snapshots: rows = members, columns = times, first channel."""
    n, t = min(members, store.spec.trajectories), store.spec.snapshots
    idx = _subsample(t, times)
    data = np.asarray(store.fields[:n, idx, 0])
    finite = data[np.isfinite(data)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    fig, axes = plt.subplots(n, len(idx), figsize=(1.9 * len(idx), 1.9 * n), squeeze=False)
    for i in range(n):
        for j, tj in enumerate(idx):
            ax = axes[i, j]
            ax.imshow(data[i, j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t = {(tj + 1) * store.spec.snapshot_dt:.3g}", fontsize=8)
        axes[i, 0].set_ylabel(f"member {i}", fontsize=8)
    return _save(fig, out)


def report_figures(report: dict[str, Any], folder: Path) -> list[Path]:
    """The evaluation figures: spectra over time, error and W1 over time, autocorrelation,
    survival curve, level and move histograms."""
    folder.mkdir(parents=True, exist_ok=True)
    mid = [np.mean(w["time"]) for w in report["windows"]]
    out = []
    k = np.asarray(report["k"])
    names = list(report["reference_spectra"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(mid)))
    for ax, name in zip(axes[0], names, strict=True):
        for colour, w in zip(colours, report["windows"], strict=True):
            ax.loglog(k[1:], np.asarray(w["mean_spectra"][name])[1:], color=colour,
                      label=f"t ∈ [{w['time'][0]:.3g}, {w['time'][1]:.3g}]")
        ax.loglog(k[1:], np.asarray(report["reference_spectra"][name])[1:], "k--", label="solver")
        ax.set_xlabel("wavenumber k")
        ax.set_title(f"{name} spectrum over time")
        ax.legend(fontsize=7)
    out.append(_save(fig, folder / "spectra.png"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        a.plot(mid, [w["spectrum_error"][name] for w in report["windows"]], "o-", label=name)
    a.set_xlabel("time")
    a.set_ylabel("relative spectrum error")
    a.legend()
    for c in range(len(report["windows"][0]["w1"])):
        b.plot(mid, [w["w1"][c] for w in report["windows"]], "o-", label=f"channel {c}")
    b.set_xlabel("time")
    b.set_ylabel("W1 of marginal PDF")
    b.legend()
    out.append(_save(fig, folder / "error_over_time.png"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if "autocorrelation" in report:
        acf = report["autocorrelation"]
        a.plot(acf["lag_time"], acf["ensemble"], label="ensemble")
        a.plot(acf["lag_time"], acf["reference"], "k--", label="solver")
        a.set_xlabel("lag")
        a.set_ylabel("autocorrelation")
        a.legend()
    surv = report["stability"]["survival"]
    b.step(surv["time"], surv["fraction"], where="post")
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel("time")
    b.set_ylabel("fraction of members stable")
    b.set_title(f"stability (spectrum error ≤ {report['stability']['threshold']})")
    out.append(_save(fig, folder / "autocorrelation_stability.png"))

    if "levels" in report:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, (label, hist) in zip(axes, [("estimated n_x", report["levels"]["n_x"]),
                                            ("estimated n_y", report["levels"]["n_y"]),
                                            ("refinement forwards", report["moves"])], strict=True):
            ax.bar(hist["value"], hist["count"], width=1.0)
            ax.set_xlabel(label)
            ax.set_ylabel("count")
        out.append(_save(fig, folder / "levels.png"))
    return out


def plot_command(kind: str, store: Path, output: Path, reference: Path | None = None) -> list[Path]:
    """What `sns-engine plot` does: spectrum or snapshots of a store, or `all` evaluation figures."""
    data = TrajectoryStore(store)
    ref = TrajectoryStore(reference) if reference else None
    if kind == "spectrum":
        return [spectrum(data, output, ref)]
    if kind == "snapshots":
        return [snapshots(data, output)]
    if ref is None:
        raise ValueError("plot all needs --reference (the solver store to compare with)")
    return [snapshots(data, output / "snapshots.png"),
            *report_figures(evaluate(store, reference), output)]


def calibration(result: dict[str, Any], out: Path) -> Path:
    """Level-head calibration (sns_engine.calibration): estimate vs true level, and on free
    emulator proposals; medians with 10–90 % bands, the identity and the resolving tolerance."""
    levels = np.asarray(result["levels"], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    a.plot(levels, levels, color="0.3", lw=1, label="n̂ = k")
    tol = np.maximum(2.0, 0.25 * levels)
    a.fill_between(levels, levels - tol, levels + tol, color="0.85", label="max(2, 25 %) of k")
    for name, label, colour in (("x_given_clean_y", "n̂_x, y clean", "C0"),
                                ("y_given_clean_x", "n̂_y, x clean", "C1"),
                                ("both_x", "n̂_x, both noised", "C2"),
                                ("both_y", "n̂_y, both noised", "C3")):
        med, lo, hi = (np.array([s[q] for s in result[name]]) for q in ("median", "p10", "p90"))
        a.plot(levels, med, marker="o", ms=3, color=colour, label=label)
        a.fill_between(levels, lo, hi, color=colour, alpha=0.15)
    a.set_xscale("symlog", linthresh=1)
    a.set_yscale("symlog", linthresh=1)
    a.set_xlabel("true noise level k (0 = clean)")
    a.set_ylabel("estimated level n̂ (argmax of the head)")
    a.set_title(f"held-out frames noised to k ({result['samples']} frames; median, 10–90 %)")
    a.legend(fontsize=8)
    free = result["emulator"]
    steps = np.asarray(free["steps"], dtype=float)
    for name, label, colour in (("n_x", "n̂_x", "C0"), ("n_y", "n̂_y", "C1")):
        med, lo, hi = (np.array([s[q] for s in free[name]]) for q in ("median", "p10", "p90"))
        b.plot(steps, med, marker="o", color=colour, label=label)
        b.fill_between(steps, lo, hi, color=colour, alpha=0.15)
    b.set_xscale("log")
    b.set_yscale("symlog", linthresh=1)
    b.set_xlabel("free emulator steps from a clean frame")
    b.set_ylabel("estimated level n̂")
    b.set_title("estimates on the emulator's own proposals")
    b.legend(fontsize=8)
    return _save(fig, out)
