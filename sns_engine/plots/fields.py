"""Figures of a store's fields: snapshots of every member, and energy spectra over time.

Snapshots carry the physical time of each column, readable axis ticks and a symmetric colour bar
per channel named by its field and units; spectra name their axes' units, what each curve is and
which field it is computed from, and draw the reference solver's spectrum when one is given.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sns_engine.data.cf import Units
from sns_engine.data.store import TrajectoryStore
from sns_engine.diagnostics.evaluate import field_spectra, subsample
from sns_engine.plots.common import (
    check_reference,
    curve_label,
    curve_source,
    store_units,
    symmetric_limit,
    time_label,
    unit_suffix,
    window_label,
)

SNAPSHOT_MEMBERS = 16  # members shown by `snapshot_figure` at most


def _kind(store: TrajectoryStore) -> tuple[str, str, str]:
    """What the store holds and what one / several of its trajectories are called."""
    if "rollout" in store.root.attrs:
        return "ensemble", "member", "members"
    return "solver data", "trajectory", "trajectories"


def store_times(store: TrajectoryStore, idx: np.ndarray) -> np.ndarray:
    """Physical time of the snapshots `idx` (the store's `time` array, after any t = 0 state)."""
    return np.asarray(store.root["time"][:])[store.t0 + idx]


def _member_grid(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of `n` panels."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def field_colormap() -> matplotlib.colors.Colormap:
    """The diverging colour map of every field figure; grey marks NaN/Inf."""
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")


def snapshot_figure(store: TrajectoryStore, members: int = SNAPSHOT_MEMBERS, times: int = 3) -> Figure:
    """Every member (up to `members`) at `times` saved steps (first, …, last), one block of a
    member grid per time and channel, each channel with its own symmetric colour bar."""
    spec, u = store.spec, store_units(store)
    n = min(members, spec.trajectories)
    idx = subsample(spec.snapshots, times)
    t = store_times(store, idx)
    data = np.asarray(store.fields[:n, store.t0 + idx])  # (n, times, C, H, W)
    rows, cols = _member_grid(n)
    side = spec.domain_length / u.length_scale
    panel = 1.45 if n > 4 else 1.9
    fig = Figure(figsize=(len(idx) * cols * panel + 1.8, spec.channels * (rows * panel + 0.9) + 0.5),
                 layout="constrained")
    kind, one, many = _kind(store)
    shown = f"all {n} {many}" if n == spec.trajectories else f"{n} of {spec.trajectories} {many} (0–{n - 1})"
    bad = "" if np.isfinite(data).all() else "; grey: NaN/Inf"
    fig.suptitle(f"{spec.system} {kind} snapshots: {shown}{bad}")
    cmap = field_colormap()
    ticks = [0, side / 2, side]
    tick_labels = [f"{v:.4g}" for v in ticks]
    for c, channel_fig in enumerate(fig.subfigures(spec.channels, 1, squeeze=False)[:, 0]):
        channel = u.channels[spec.channel_names[c]]
        limit, beyond = symmetric_limit(data[:, :, c])
        norm = Normalize(-limit, limit)
        *blocks, bar_fig = channel_fig.subfigures(1, len(idx) + 1, width_ratios=[cols] * len(idx) + [0.8])
        for j, block in enumerate(blocks):
            block.suptitle(f"{channel.symbol}, {time_label(u, float(t[j]))}", fontsize=10)
            axes = block.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
            for i, ax in enumerate(axes.flat):
                if i >= n:
                    ax.set_axis_off()
                    continue
                image = ax.imshow(data[i, j, c], cmap=cmap, norm=norm, origin="lower",
                                  extent=(0, side, 0, side), interpolation="nearest")
                ax.set_title(f"{one} {i}", fontsize=8, pad=2)
                ax.set_xticks(ticks, tick_labels)
                ax.set_yticks(ticks, tick_labels)
                ax.tick_params(labelsize=7, length=2)
            left_bottom = axes[rows - 1, 0]
            left_bottom.set_xlabel(f"x{unit_suffix(u.length_unit)}", fontsize=8)
            left_bottom.set_ylabel(f"y{unit_suffix(u.length_unit)}", fontsize=8)
        bar = bar_fig.colorbar(image, cax=bar_fig.add_axes((0.1, 0.08, 0.22, 0.8)),
                               extend="both" if beyond else "neither")
        bar.set_label(channel.label, fontsize=10)
        bar.ax.tick_params(labelsize=8)
    return fig


def _mean_spectra(store: TrajectoryStore, times: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Spectra averaged over all trajectories at the snapshots `times` (after any t = 0 state),
    `batch` trajectories at a time."""
    total: dict[str, np.ndarray] = {}
    for lo in range(0, store.spec.trajectories, batch):
        fields = torch.from_numpy(np.asarray(store.fields[lo:lo + batch, store.t0 + times]))
        for name, value in field_spectra(store, fields).items():
            total[name] = value.numpy() if name == "k" else total.get(name, 0) + value.sum((0, 1)).numpy()
    count = store.spec.trajectories * len(times)
    return {name: v if name == "k" else v / count for name, v in total.items()}


def spectrum_figure(store: TrajectoryStore, reference: TrajectoryStore | None = None,
                    windows: int = 4) -> Figure:
    """Energy spectra averaged over members in `windows` time windows, log-log, one panel per
    curve, plus the reference solver's (all its trajectories and times) when given; without one
    the title says so."""
    spec, u = store.spec, store_units(store)
    if reference is not None:
        check_reference(store, reference)
    t = spec.snapshots
    bounds = np.linspace(0, t, min(windows, t) + 1).round().astype(int)
    times = store_times(store, np.arange(t))
    kind, _, many = _kind(store)
    curves = [(f"{kind}, {window_label(u, float(times[lo]), float(times[hi - 1]))}",
               _mean_spectra(store, subsample(hi - lo, 16) + lo))
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    solver = (_mean_spectra(reference, subsample(reference.spec.snapshots, 16))
              if reference is not None else None)
    names = [n for n in curves[0][1] if n != "k"]
    fig = Figure(figsize=(5.6 * len(names), 4.4), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(curves)))
    for ax, name in zip(axes, names, strict=True):
        for colour, (label, s) in zip(colours, curves, strict=True):
            ax.loglog(s["k"][1:], s[name][1:], color=colour, label=label)
        if solver is not None:
            ax.loglog(solver["k"][1:], solver[name][1:], "k--", label="solver reference (all times)")
        label_spectrum_axes(ax, u, name)
    note = "" if solver is not None else "\n(no solver reference given: plot with --reference STORE)"
    fig.suptitle(f"{spec.system} energy spectra, mean of {spec.trajectories} {many}, "
                 f"{window_label(u, float(times[0]), float(times[-1]))}{note}", fontsize=11)
    return fig


def label_spectrum_axes(ax, u: Units, name: str) -> None:
    """Axis labels, title (what the curve is) and legend (titled by the field it is computed
    from) of a spectrum panel."""
    ax.set_xlabel(f"wavenumber k{unit_suffix(u.wavenumber_unit)}")
    ax.set_ylabel(f"energy spectrum E(k){unit_suffix(u.energy_spectrum_unit or 'nondimensional')}")
    ax.set_title(f"{curve_label(name)} spectrum")
    ax.legend(fontsize=7, title=curve_source(u, name), title_fontsize=7)
