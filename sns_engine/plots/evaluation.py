"""The figures of one evaluation report (`diagnostics.evaluate.evaluate`), and what
`sns-engine plot` writes: spectrum, snapshots, or every figure of a store against its reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sns_engine.data.cf import Units
from sns_engine.data.store import TrajectoryStore
from sns_engine.diagnostics.evaluate import evaluate
from sns_engine.plots.common import (
    check_reference,
    count_histogram,
    curve_label,
    save,
    store_units,
    time_axis,
    window_label,
    write_figures,
)
from sns_engine.plots.fields import (
    SNAPSHOT_MEMBERS,
    label_spectrum_axes,
    snapshot_figure,
    spectrum_figure,
)


def report_figure_set(report: dict[str, Any], u: Units | None = None) -> dict[str, Figure]:
    """The evaluation figures by file name: spectra over time, error and W1 over time,
    autocorrelation and survival curve, level and move histograms (where levels were
    estimated). `u` names the fields and units
    (default: the curves' and channels' own names, times unscaled)."""
    u = u or Units({})
    channels = list(u.channels.values())
    mid = [np.mean(w["time"]) / u.time_scale for w in report["windows"]]
    figures = {}
    k = np.asarray(report["k"])
    names = list(report["reference_spectra"])
    fig = Figure(figsize=(5.6 * len(names), 4.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(mid)))
    for ax, name in zip(axes, names, strict=True):
        for colour, w in zip(colours, report["windows"], strict=True):
            ax.loglog(k, w["mean_spectra"][name], color=colour,
                      label=f"ensemble, {window_label(u, *w['time'])}")
        ax.loglog(k, report["reference_spectra"][name], "k--", label="solver reference")
        label_spectrum_axes(ax, u, name)
    first, last = report["windows"][0]["time"][0], report["windows"][-1]["time"][1]
    fig.suptitle(f"energy spectra over time, {report['members']} members, "
                 f"{window_label(u, first, last)}")
    figures["spectra.png"] = fig

    fig = Figure(figsize=(10, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    for name in names:
        a.plot(mid, [w["spectrum_error"][name] for w in report["windows"]], "o-",
               label=curve_label(name))
    a.set_xlabel(time_axis(u))
    a.set_ylabel("spectrum error\n(mean |log E/E_ref| over resolved shells)")
    a.legend(fontsize=7)
    for c in range(len(report["windows"][0]["w1"])):
        label = channels[c].label if c < len(channels) else f"channel {c}"
        b.plot(mid, [w["w1"][c] for w in report["windows"]], "o-", label=label)
    b.set_xlabel(time_axis(u))
    b.set_ylabel("W1 distance of the marginal PDF\n(field units)")
    b.legend(fontsize=7)
    figures["error_over_time.png"] = fig

    fig = Figure(figsize=(10, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    if "autocorrelation" in report:
        acf = report["autocorrelation"]
        lag = np.asarray(acf["lag_time"]) / u.time_scale
        a.plot(lag, acf["ensemble"], label="ensemble")
        a.plot(lag, acf["reference"], "k--", label="solver reference")
        a.axhline(math.exp(-1), color="0.5", lw=0.8, ls=":",
                  label="1/e (decorrelation time: where a curve crosses it)")
        a.set_xlabel(time_axis(u, "lag"))
        a.set_ylabel("autocorrelation")
        a.legend(fontsize=7)
    else:
        a.set_axis_off()
        a.set_title("no autocorrelation (ensemble and solver intervals differ)", fontsize=8)
    stability = report["stability"]
    times = np.array([math.inf if t is None else t for t in stability["times"]])
    grid = np.arange(report["snapshots"] + 1) * report["snapshot_dt"]
    b.step(grid / u.time_scale, [np.mean(times > t) for t in grid], where="post")
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel(time_axis(u))
    b.set_ylabel("fraction of members stable")
    b.set_title(f"stable: spectrum error ≤ {stability['threshold']:g}, energy in "
                f"[{stability['energy_bounds'][0]:g}, {stability['energy_bounds'][1]:g}]×\nthe "
                "reference's, not flagged (a flag counts as lost)", fontsize=9)
    figures["autocorrelation_stability.png"] = fig

    if (report.get("levels") or {}).get("n_x", {}).get("value"):  # the bare emulator has none
        fig = Figure(figsize=(13, 4), layout="constrained")
        for ax, (label, hist) in zip(fig.subplots(1, 3), [
                ("estimated level n̂_x", report["levels"]["n_x"]),
                ("estimated level n̂_y", report["levels"]["n_y"]),
                ("refinement forwards per member-step", report["moves"])], strict=True):
            count_histogram(ax, hist, label)
        figures["levels.png"] = fig
    return figures


def spectrum(store: TrajectoryStore, out: Path, reference: TrajectoryStore | None = None,
             windows: int = 4) -> Path:
    """Write `spectrum_figure` to `out`."""
    return save(spectrum_figure(store, reference, windows), out)


def snapshots(store: TrajectoryStore, out: Path, members: int = SNAPSHOT_MEMBERS,
              times: int = 3) -> Path:
    """Write `snapshot_figure` to `out`."""
    return save(snapshot_figure(store, members, times), out)


def report_figures(report: dict[str, Any], folder: Path, u: Units | None = None) -> list[Path]:
    """Write `report_figure_set` into `folder`."""
    return write_figures({folder / name: fig for name, fig in report_figure_set(report, u).items()})


def plot_command(kind: str, store: Path, output: Path, reference: Path | None = None,
                 partial: bool = False) -> list[Path]:
    """What `sns-engine plot` does: spectrum or snapshots of a store, or `all` evaluation figures
    into the folder `output` (`partial`: of the steps an unfinished ensemble store has written).
    Inputs are checked and every figure is built before any is written."""
    data = TrajectoryStore(store)
    ref = TrajectoryStore(reference) if reference else None
    if ref is not None:
        check_reference(data, ref)
    if kind == "spectrum":
        return [save(spectrum_figure(data, ref), output)]
    if kind == "snapshots":
        return [save(snapshot_figure(data), output)]
    if ref is None:
        raise ValueError("plot all needs --reference (the solver store to compare with)")
    figures = {output / "snapshots.png": snapshot_figure(data)}
    report = evaluate(store, reference, partial=partial)
    for name, fig in report_figure_set(report, store_units(data)).items():
        figures[output / name] = fig
    return write_figures(figures)
