"""Ensembles side by side (`sns-engine compare`): the first member of each at a few times, and
every member's spectrum error and kinetic energy over time against the solver's climatology
(`sns_engine.diagnostics.climatology`; `calibration.climate_of` finds it in a solver store or a
calibrated bundle)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from sns_engine.data.store import TrajectoryStore
from sns_engine.diagnostics.climatology import drift
from sns_engine.diagnostics.evaluate import subsample
from sns_engine.plots.common import save, store_units, symmetric_limit, time_axis, time_label
from sns_engine.plots.fields import field_colormap

SNAPSHOT_TIMES = 4  # columns of the snapshot rows: first, …, last saved time
COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def label_of(store: TrajectoryStore) -> str:
    """'solver', 'emulator', or the refinement path and the settings that differ from the
    authors' ('left_down, long=lagged')."""
    rollout = store.root.attrs.get("rollout")
    if rollout is None:
        return "solver"
    if rollout["path"] == "emulator":
        return "emulator"
    authors = {"level_floor": 0, "level_floor_y": 0, "every": 1, "long": "initial", "walk": "ddpm"}
    changed = [f"{k}={rollout[k]}" for k, v in authors.items() if rollout.get(k, v) != v]
    return ", ".join([f"SNS {rollout['path']}", *changed])


def compare_figure(stores: Sequence[str | Path], climate: dict[str, Any]) -> Figure:
    """The first member of every store at `SNAPSHOT_TIMES` saved times (one row each, one colour
    scale), then every member's spectrum error and kinetic-energy ratio against `climate` over
    time (median line, min–max band), with the solver's own single-snapshot error range."""
    data = [TrajectoryStore(s) for s in stores]
    u = store_units(data[0])
    channel = data[0].spec.channel_names[0]
    side = data[0].spec.domain_length / u.length_scale
    written = [d.t0 + d.written() for d in data]  # from t = 0 where a store holds it
    drifts = [drift(s, climate) for s in stores]
    frames = []
    for d, n in zip(data, written, strict=True):
        idx = subsample(n, SNAPSHOT_TIMES)
        frames.append((idx, np.asarray(d.root["time"][:])[idx], np.asarray(d.fields[0, idx, 0])))
    limit, beyond = symmetric_limit(frames[0][2][:1])  # the shared initial state sets the scale
    norm, cmap = Normalize(-limit, limit), field_colormap()

    fig = Figure(figsize=(2.3 * SNAPSHOT_TIMES + 1.2, 2.2 * len(data) + 3.6), layout="constrained")
    fig.suptitle(f"{data[0].spec.system}: member 0 of each ensemble, and every member against the "
                 f"solver's climatology ({climate['source']})", fontsize=10)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2 * len(data), 3.4])
    axes = top.subplots(len(data), SNAPSHOT_TIMES, squeeze=False)
    for row, (d, (idx, times, fields)) in enumerate(zip(data, frames, strict=True)):
        for col, ax in enumerate(axes[row]):
            if col >= len(idx):
                ax.set_axis_off()
                continue
            image = ax.imshow(fields[col], cmap=cmap, norm=norm, origin="lower",
                              extent=(0, side, 0, side), interpolation="nearest")
            ax.set_title(time_label(u, float(times[col])), fontsize=8, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label_of(d), fontsize=8)
    bar = top.colorbar(image, ax=axes, shrink=0.8, extend="both" if beyond else "neither")
    bar.set_label(u.channels[channel].label, fontsize=9)

    err_ax, energy_ax = bottom.subplots(1, 2)
    floor = climate["spectrum_error"]
    err_ax.axhspan(floor["p5"], floor["p95"], color="0.85", label="solver's own snapshots (5–95 %)")
    err_ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1, label="instability threshold (1)")
    energy_ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)
    for i, (d, run) in enumerate(zip(data, drifts, strict=True)):
        colour = COLOURS[i % len(COLOURS)]
        t = np.asarray(run["time"]) / u.time_scale
        for ax, key in ((err_ax, "spectrum_error"), (energy_ax, "energy_ratio")):
            values = np.asarray(run[key], dtype=float)
            values = np.where(np.isfinite(values), values, np.nan)
            ax.fill_between(t, np.nanmin(values, 0), np.nanmax(values, 0), color=colour, alpha=0.2,
                            linewidth=0)
            ax.plot(t, np.nanmedian(values, 0), color=colour, linewidth=1.5,
                    label=f"{label_of(d)} ({len(values)} members)")
    err_ax.set_ylabel("spectrum error (mean |log E(k)/E_solver(k)|)", fontsize=9)
    energy_ax.set_ylabel("kinetic energy / solver's", fontsize=9)
    for ax in (err_ax, energy_ax):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_log_tick))
        ax.yaxis.set_minor_formatter(FuncFormatter(_log_tick))
        ax.set_xlabel(time_axis(u), fontsize=9)
        ax.tick_params(labelsize=8)
    err_ax.legend(fontsize=7, loc="upper left")
    energy_ax.set_title("median and range over members", fontsize=9)
    return fig


def _log_tick(value: float, _position: int) -> str:
    """A log axis's tick label: the plain number at 1, 2, 3 and 5 of each decade, else none."""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 3, 5)) else ""


def compare(stores: Sequence[str | Path], output: str | Path, climate: dict[str, Any]) -> Path:
    """Write `compare_figure` of `stores` against `climate` to the PNG `output`."""
    if not stores:
        raise ValueError("compare needs at least one store")
    return save(compare_figure(stores, climate), Path(output))
