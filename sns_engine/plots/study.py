"""The figures of a study: every method against the solver floor band over time (spectrum, band
and W1 errors, kinetic energy), survival with frozen members censored, autocorrelation, member 0
of every method side by side, and the refinement forwards each method spent.

Every method keeps one style in every figure (`method_styles`): its colour, a line style and a
hollow marker of its own, drawn thinner and smaller the later it comes, so a method whose curve
coincides with another's still shows around it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sns_engine.data.cf import Units
from sns_engine.data.store import TrajectoryStore
from sns_engine.diagnostics.evaluate import subsample
from sns_engine.plots.common import (
    count_histogram,
    curve_label,
    store_units,
    symmetric_limit,
    time_axis,
    time_label,
    time_unit,
    unit_suffix,
    write_figures,
)
from sns_engine.plots.fields import field_colormap

FLOOR = "solver"  # the study's solver control ensemble: the floor band of every study figure
BANDS = ("low", "mid", "high")
MARKERS = "osD^vPX<>h"
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def method_styles(labels: list[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib line keywords per label: the floor grey and dashed, every method its colour,
    line style and hollow marker; later methods on top, thinner and with smaller markers."""
    styles, i = {}, 0
    for label in labels:
        if label == FLOOR:
            styles[label] = {"color": "0.35", "ls": "--", "lw": 1.2, "zorder": 1}
            continue
        styles[label] = {"color": f"C{i % 10}", "ls": LINESTYLES[i % len(LINESTYLES)],
                         "marker": MARKERS[i % len(MARKERS)], "mfc": "none",
                         "lw": max(2.6 - 0.35 * i, 0.9), "ms": max(8.0 - 0.9 * i, 3.5),
                         "zorder": 3 + i}
        i += 1
    return styles


def study_figure_set(reports: Mapping[str, dict[str, Any]], u: Units,
                     survival: Mapping[str, dict[str, Any]],
                     stores: Mapping[str, tuple[TrajectoryStore, int]] | None = None,
                     ) -> dict[str, Figure]:
    """The figures of a study by file name. `survival` holds each label's survival curve with
    frozen members censored (`study.outcomes.survival`: time, fraction, censored); `stores` maps
    each label to (store, first snapshot aligned with the methods' first state), for the
    snapshots figure (left out without stores)."""
    first = next(iter(reports.values()))
    curves = list(first["windows"][0]["spectrum_error"])
    channels = list(u.channels.values())
    styles = method_styles(list(reports))

    def panel(ax: Any, get: Any, ylabel: str) -> None:
        for label, r in reports.items():
            ws = r["windows"]
            x = [float(np.mean(w["time"])) / u.time_scale for w in ws]
            lo, hi = (np.asarray([get(w["interval"], w)[i] for w in ws], dtype=float) for i in (0, 1))
            style = styles[label]
            if label == FLOOR:
                ax.fill_between(x, lo, hi, color="0.8", label="solver control (the floor), 90 % band")
                ax.plot(x, [get(w, w) for w in ws], **style)
            else:
                ax.plot(x, [get(w, w) for w in ws], **style, label=label)
                ax.fill_between(x, lo, hi, color=style["color"], alpha=0.1, lw=0)
        ax.set_xlabel(time_axis(u))
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")

    def legend(fig: Figure) -> None:  # one legend for every panel of a figure
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
                   fontsize=8)

    figures = {}
    n = 2 * len(curves) + len(channels)
    fig = Figure(figsize=(4.8 * n, 5.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, c in zip(axes, curves, strict=False):
        panel(ax, lambda w, _, c=c: w["spectrum_error"][c], f"spectrum error\n{curve_label(c)}")
    for i, ax in enumerate(axes[len(curves):len(curves) + len(channels)]):
        panel(ax, lambda w, _, i=i: w["w1"][i], f"W1 of the PDF\n{channels[i].label}")
    for ax, c in zip(axes[len(curves) + len(channels):], curves, strict=True):
        panel(ax, lambda w, _, c=c: w["energy_ratio"][c], f"{curve_label(c)} / reference\n(1: dotted)")
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
    fig.suptitle("every method against the solver floor (solver control from the same initial "
                 "states; bands: 90 % bootstrap over members)")
    legend(fig)
    figures["error_over_time.png"] = fig

    shells = first.get("bands", {})
    fig = Figure(figsize=(4.8 * len(BANDS), 3.9 * len(curves) + 1.0), layout="constrained")
    grid = fig.subplots(len(curves), len(BANDS), squeeze=False)
    for row, c in zip(grid, curves, strict=True):
        for ax, b in zip(row, BANDS, strict=True):
            panel(ax, lambda w, _, c=c, b=b: w["band_error"][c][b], f"{b}-k spectrum error, {c}")
            if b in shells:
                ax.set_title(f"{b} k: k ∈ [{shells[b][0]:.3g}, {shells[b][1]:.3g}]"
                             f"{unit_suffix(u.wavenumber_unit)}", fontsize=9)
    legend(fig)
    figures["band_errors.png"] = fig

    figures["survival.png"] = _survival(reports, survival, styles, u)

    with_acf = {m: r["autocorrelation"] for m, r in reports.items() if "autocorrelation" in r}
    if with_acf:
        fig = Figure(figsize=(7, 4.6), layout="constrained")
        ax = fig.subplots()
        for label, acf in with_acf.items():
            ax.plot(np.asarray(acf["lag_time"]) / u.time_scale, acf["ensemble"],
                    **styles[label], markevery=4, label=label)
        acf = next(iter(with_acf.values()))
        ax.plot(np.asarray(acf["lag_time"]) / u.time_scale, acf["reference"], "k:",
                label="reference")
        ax.axhline(math.exp(-1), color="0.5", lw=0.8,
                   label="1/e: the decorrelation time is where a curve crosses it")
        ax.set_xlabel(time_axis(u, "lag"))
        ax.set_ylabel("autocorrelation")
        ax.legend(fontsize=7)
        figures["autocorrelation.png"] = fig

    if stores is not None:
        figures["snapshots.png"] = _study_snapshots(stores, u)

    refining = {m: r["moves"] for m, r in reports.items() if (r.get("moves") or {}).get("mean")}
    if refining:
        fig = Figure(figsize=(4.2 * len(refining), 3.9), layout="constrained")
        for ax, (label, hist) in zip(fig.subplots(1, len(refining), squeeze=False)[0],
                                     refining.items(), strict=True):
            count_histogram(ax, hist, "refinement forwards per member-step")
            ax.set_title(f"{label}\nmean {hist['mean']:.3g}", fontsize=9)
        figures["refinement_steps.png"] = fig
    return figures


def _survival(reports: Mapping[str, dict[str, Any]], survival: Mapping[str, dict[str, Any]],
              styles: dict[str, dict[str, Any]], u: Units) -> Figure:
    """Members stable at every saved state, frozen members censored (a tick where one was
    frozen); a curve identical to an earlier one says so in the legend."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    drawn: dict[tuple[float, ...], str] = {}
    for i, (label, s) in enumerate(survival.items()):
        t, f = np.asarray(s["time"]) / u.time_scale, np.asarray(s["fraction"])
        same = drawn.setdefault(tuple(f), label)
        note = f" (same curve as {same})" if same != label else ""
        every = max(len(t) // 8, 1)
        line, = ax.step(t, f, where="post", **styles[label], markevery=(i * every // 4 % every, every),
                        label=label + note)
        censored = np.asarray(s["censored"]) / u.time_scale
        if censored.size:
            at = f[np.searchsorted(t, censored, side="right") - 1]
            ax.plot(censored, at, "|", ms=12, mew=1.5, color=line.get_color(), zorder=10)
    first = next(iter(reports.values()))["stability"]
    frozen = any(len(s["censored"]) for s in survival.values())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(time_axis(u))
    ax.set_ylabel("fraction of members stable")
    ax.set_title(f"stable: spectrum error ≤ {first['threshold']:g}, energy in "
                 f"[{first['energy_bounds'][0]:g}, {first['energy_bounds'][1]:g}]× the reference's"
                 + ("\n| a frozen member, censored there (Kaplan–Meier)" if frozen else ""),
                 fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _frozen_time(store: TrajectoryStore, member: int) -> float | None:
    """When `member` of an ensemble store was flagged (and frozen): the physical time of its
    flag step; None if it never was (or the store is solver data)."""
    step = int(store.flagged_steps()[member])
    return None if step < 0 else (step + 1) * store.spec.snapshot_dt / store.save_every


def _study_snapshots(stores: Mapping[str, tuple[TrajectoryStore, int]], u: Units,
                     times: int = 4, member: int = 0) -> Figure:
    """Member `member` of every store (rows) at `times` aligned saved states (columns), channel 0,
    one symmetric colour scale from the solver's row; a frozen member says from when."""
    rows = list(stores)
    store0, offset0 = stores[rows[0]]
    count = store0.spec.snapshots - offset0
    idx = subsample(count, times)
    data = {label: np.asarray(s.fields[member, s.t0 + idx + off, 0])
            for label, (s, off) in stores.items()}
    t = (idx + 1) * store0.spec.snapshot_dt  # the methods' saved state j is (j + 1) intervals in
    limit, _ = symmetric_limit(data[FLOOR] if FLOOR in data else data[rows[0]])
    channel = next(iter(u.channels.values()))
    side = store0.spec.domain_length / u.length_scale
    fig = Figure(figsize=(2.3 * len(idx) + 3.4, 2.3 * len(rows) + 0.8), layout="constrained")
    grid = fig.subplots(len(rows), len(idx) + 1, squeeze=False, width_ratios=[0.75] + [1] * len(idx))
    names, axes = grid[:, 0], grid[:, 1:]  # a column of row names, then the panels
    cmap = field_colormap()
    for r, label in enumerate(rows):
        frozen = _frozen_time(stores[label][0], member)
        for j in range(len(idx)):
            ax = axes[r, j]
            image = ax.imshow(data[label][j], cmap=cmap, norm=Normalize(-limit, limit),
                              origin="lower", extent=(0, side, 0, side), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(time_label(u, float(t[j])), fontsize=9)
            if frozen is not None and t[j] >= frozen - 1e-9:
                ax.text(0.5, 0.04, f"frozen since t = {frozen / u.time_scale:.3g}",
                        transform=ax.transAxes, ha="center", va="bottom", fontsize=7,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "k", "lw": 0.6})
        name = label.replace("[", "\n[", 1)
        if frozen is not None:
            name += f"\nflagged and frozen\nat t = {frozen / u.time_scale:.3g}"
        names[r].set_axis_off()
        names[r].text(1.0, 0.5, name, transform=names[r].transAxes, ha="right", va="center",
                      fontsize=8)
    bar = fig.colorbar(image, ax=axes, shrink=0.6, extend="both")
    bar.set_label(channel.label, fontsize=9)
    fig.suptitle(f"member {member} of every method and of the solver from the same initial state "
                 f"(time in {time_unit(u)})")
    return fig


def study_figures(reports: Mapping[str, dict[str, Any]], folder: Path,
                  stores: Mapping[str, tuple[Path, int]],
                  survival: Mapping[str, dict[str, Any]]) -> list[Path]:
    """Write `study_figure_set` into `folder` (all or nothing)."""
    opened = {label: (TrajectoryStore(path), offset) for label, (path, offset) in stores.items()}
    u = store_units(next(iter(opened.values()))[0])
    return write_figures({folder / name: fig
                          for name, fig in study_figure_set(reports, u, survival, opened).items()})
