"""PNG figures (matplotlib, Agg): spectra, snapshots, and an evaluation report's curves.

Every figure names its fields and units (`sns_engine.systems.units`): snapshots carry the
physical time of each column and a symmetric colour bar per channel, spectra their axes' units and
a legend of field, ensemble and solver. Figures are built first and written last
(`write_figures`): all of them are rendered to PNG in memory, written to temporary files beside
their targets and only then renamed into place, so a bad store or reference, a rendering error or
a full disk leaves no partial or half-written figure behind.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sns_engine.data.store import StoreError, TrajectoryStore  # noqa: E402
from sns_engine.diagnostics.evaluate import evaluate, field_spectra, subsample  # noqa: E402
from sns_engine.files import atomic_write  # noqa: E402
from sns_engine.systems import Units, units  # noqa: E402

SNAPSHOT_MEMBERS = 16  # members shown by `snapshots` at most
DPI = 110
# the spectra of diagnostics.evaluate.field_spectra, by curve name: what they are, from which channel
_CURVES = {"energy": ("kinetic energy", "vorticity"),
           "energy_upper": ("upper-layer kinetic energy", "q_upper"),
           "energy_lower": ("lower-layer kinetic energy", "q_lower")}


def store_units(store: TrajectoryStore) -> Units:
    """The display names and units of `store`'s system and channels."""
    return units(store.spec.system, store.spec.channel_names)


def _unit(text: str) -> str:
    return f" ({text})" if text else ""


def _time(u: Units, t: float) -> str:
    return f"t = {t / u.time_scale:.4g}" + (f" {u.time_unit}" if u.time_unit else "")


def _window(u: Units, lo: float, hi: float) -> str:
    return (f"t ∈ [{lo / u.time_scale:.4g}, {hi / u.time_scale:.4g}]"
            + (f" {u.time_unit}" if u.time_unit else ""))


def _curve_label(name: str) -> str:
    return _CURVES.get(name, (name, None))[0]


def _curve_source(u: Units, name: str) -> str | None:
    """The label of the channel a spectrum is computed from, e.g. 'field: q₁ upper-layer PV
    anomaly (1/s)'; None where unknown."""
    channel = u.channels.get(_CURVES.get(name, (name, ""))[1])
    return f"field: {channel.label}" if channel else None


def _kind(store: TrajectoryStore) -> tuple[str, str, str]:
    """What the store holds and what one / several of its trajectories are called."""
    if "rollout" in store.root.attrs:
        return "ensemble", "member", "members"
    return "solver data", "trajectory", "trajectories"


def _store_times(store: TrajectoryStore, idx: np.ndarray) -> np.ndarray:
    """Physical time of the snapshots `idx` (the store's `time` array)."""
    return np.asarray(store.root["time"][:])[idx]


def check_reference(store: TrajectoryStore, reference: TrajectoryStore) -> None:
    """Raise StoreError unless `reference` holds the same system, channels, grid and domain as
    `store` (so their spectra and fields can be compared)."""
    for key in ("system", "channel_names", "grid", "domain_length"):
        mine, theirs = getattr(store.spec, key), getattr(reference.spec, key)
        if mine != theirs:
            raise StoreError(f"{store.path} has {key}={mine!r} but the reference {reference.path} has "
                             f"{theirs!r}; pass the solver store the ensemble was trained on")


def _member_grid(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of `n` panels."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _symmetric_limit(values: np.ndarray) -> tuple[float, bool]:
    """A symmetric colour limit (99.9th percentile of |finite values|) and whether values lie
    beyond it."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0, False
    limit = float(np.percentile(finite, 99.9)) or float(finite.max()) or 1.0
    return limit, bool(finite.max() > limit)


def snapshot_figure(store: TrajectoryStore, members: int = SNAPSHOT_MEMBERS, times: int = 3) -> Figure:
    """Every member (up to `members`) at `times` saved steps (first, …, last), one block of a
    member grid per time and channel, each channel with its own symmetric colour bar."""
    spec, u = store.spec, store_units(store)
    n = min(members, spec.trajectories)
    idx = subsample(spec.snapshots, times)
    t = _store_times(store, idx)
    data = np.asarray(store.fields[:n, idx])  # (n, times, C, H, W)
    rows, cols = _member_grid(n)
    side = spec.domain_length / u.length_scale
    panel = 1.25 if n > 4 else 1.7
    fig = Figure(figsize=(len(idx) * cols * panel + 1.4, spec.channels * (rows * panel + 0.7) + 0.5),
                 layout="constrained")
    kind, one, many = _kind(store)
    shown = f"all {n} {many}" if n == spec.trajectories else f"{n} of {spec.trajectories} {many} (0–{n - 1})"
    bad = "" if np.isfinite(data).all() else "; grey: NaN/Inf"
    fig.suptitle(f"{spec.system} {kind} snapshots: {shown}{bad}")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    for c, channel_fig in enumerate(fig.subfigures(spec.channels, 1, squeeze=False)[:, 0]):
        channel = u.channels[spec.channel_names[c]]
        limit, beyond = _symmetric_limit(data[:, :, c])
        norm = Normalize(-limit, limit)
        *blocks, bar_fig = channel_fig.subfigures(1, len(idx) + 1, width_ratios=[cols] * len(idx) + [0.7])
        for j, block in enumerate(blocks):
            block.suptitle(f"{channel.symbol}, {_time(u, float(t[j]))}", fontsize=9)
            axes = block.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
            for i, ax in enumerate(axes.flat):
                if i >= n:
                    ax.set_axis_off()
                    continue
                image = ax.imshow(data[i, j, c], cmap=cmap, norm=norm, origin="lower",
                                  extent=(0, side, 0, side), interpolation="nearest")
                ax.set_title(f"{one} {i}", fontsize=6, pad=2)
                ax.tick_params(labelsize=5, length=2)
            left_bottom = axes[rows - 1, 0]
            left_bottom.set_xlabel(f"x{_unit(u.length_unit)}", fontsize=7)
            left_bottom.set_ylabel(f"y{_unit(u.length_unit)}", fontsize=7)
        bar = bar_fig.colorbar(image, cax=bar_fig.add_axes((0.1, 0.08, 0.22, 0.8)),
                               extend="both" if beyond else "neither")
        bar.set_label(channel.label, fontsize=8)
        bar.ax.tick_params(labelsize=6)
    return fig


def _mean_spectra(store: TrajectoryStore, times: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Spectra averaged over all trajectories at `times`, `batch` trajectories at a time."""
    total: dict[str, np.ndarray] = {}
    for lo in range(0, store.spec.trajectories, batch):
        fields = torch.from_numpy(np.asarray(store.fields[lo:lo + batch, times]))
        for name, value in field_spectra(store, fields).items():
            total[name] = value.numpy() if name == "k" else total.get(name, 0) + value.sum((0, 1)).numpy()
    count = store.spec.trajectories * len(times)
    return {name: v if name == "k" else v / count for name, v in total.items()}


def spectrum_figure(store: TrajectoryStore, reference: TrajectoryStore | None = None,
                    windows: int = 4) -> Figure:
    """Energy spectra averaged over members in `windows` time windows, log-log, one panel per
    curve, plus the reference solver's (all its trajectories and times) when given."""
    spec, u = store.spec, store_units(store)
    if reference is not None:
        check_reference(store, reference)
    t = spec.snapshots
    bounds = np.linspace(0, t, min(windows, t) + 1).round().astype(int)
    times = _store_times(store, np.arange(t))
    kind, _, many = _kind(store)
    curves = [(f"{kind}, {_window(u, float(times[lo]), float(times[hi - 1]))}",
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
        _label_spectrum_axes(ax, u, name)
    fig.suptitle(f"{spec.system} energy spectra, mean of {spec.trajectories} {many}, "
                 f"{_window(u, float(times[0]), float(times[-1]))}")
    return fig


def _label_spectrum_axes(ax: Any, u: Units, name: str) -> None:
    ax.set_xlabel(f"wavenumber k{_unit(u.wavenumber_unit)}")
    ax.set_ylabel(f"energy spectrum E(k){_unit(u.energy_spectrum_unit or 'nondimensional')}")
    ax.set_title(_curve_label(name))
    ax.legend(fontsize=7, title=_curve_source(u, name), title_fontsize=7)


def report_figure_set(report: dict[str, Any], u: Units | None = None) -> dict[str, Figure]:
    """The evaluation figures by file name: spectra over time, error and W1 over time,
    autocorrelation and survival curve, level and move histograms. `u` names the fields and units
    (default: the curves' and channels' own names, times unscaled)."""
    u = u or Units({})
    channels = list(u.channels.values())
    time_axis = f"time{_unit(u.time_unit)}"
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
                      label=f"ensemble, {_window(u, *w['time'])}")
        ax.loglog(k, report["reference_spectra"][name], "k--",
                  label="solver reference")
        _label_spectrum_axes(ax, u, name)
    first, last = report["windows"][0]["time"][0], report["windows"][-1]["time"][1]
    fig.suptitle(f"energy spectra over time, {report['members']} members, {_window(u, first, last)}")
    figures["spectra.png"] = fig

    fig = Figure(figsize=(10, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    for name in names:
        a.plot(mid, [w["spectrum_error"][name] for w in report["windows"]], "o-",
               label=_curve_label(name))
    a.set_xlabel(time_axis)
    a.set_ylabel("spectrum error (mean |log E/E_ref| over resolved shells)")
    a.legend(fontsize=7)
    for c in range(len(report["windows"][0]["w1"])):
        label = channels[c].label if c < len(channels) else f"channel {c}"
        b.plot(mid, [w["w1"][c] for w in report["windows"]], "o-", label=label)
    b.set_xlabel(time_axis)
    b.set_ylabel("W1 distance of the marginal PDF (field units)")
    b.legend(fontsize=7)
    figures["error_over_time.png"] = fig

    fig = Figure(figsize=(10, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    if "autocorrelation" in report:
        acf = report["autocorrelation"]
        lag = np.asarray(acf["lag_time"]) / u.time_scale
        a.plot(lag, acf["ensemble"], label="ensemble")
        a.plot(lag, acf["reference"], "k--", label="solver reference")
        a.set_xlabel(f"lag{_unit(u.time_unit)}")
        a.set_ylabel("autocorrelation")
        a.legend(fontsize=7)
    else:
        a.set_axis_off()
        a.set_title("no autocorrelation (ensemble and solver intervals differ)", fontsize=8)
    surv = report["stability"]["survival"]
    b.step(np.asarray(surv["time"]) / u.time_scale, surv["fraction"], where="post")
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel(time_axis)
    b.set_ylabel("fraction of members stable")
    b.set_title(f"stability (spectrum error ≤ {report['stability']['threshold']:g})")
    figures["autocorrelation_stability.png"] = fig

    if "levels" in report:
        fig = Figure(figsize=(13, 3.8), layout="constrained")
        for ax, (label, hist) in zip(fig.subplots(1, 3), [
                ("estimated level n_x", report["levels"]["n_x"]),
                ("estimated level n_y", report["levels"]["n_y"]),
                ("refinement forwards per member-step", report["moves"])], strict=True):
            ax.bar(hist["value"], hist["count"], width=1.0)
            ax.set_xlabel(label)
            ax.set_ylabel("count")
        figures["levels.png"] = fig
    return figures


def write_figures(figures: Mapping[Path, Any]) -> list[Path]:
    """Write figures to their paths (PNG) all or nothing, as far as the file system allows:
    render all, write each to a temporary file beside its target, then rename them into place.
    A figure without a layout engine gets matplotlib's tight layout."""
    rendered = {}
    for out, fig in figures.items():
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("tight")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        plt.close(fig)
        rendered[Path(out)] = buffer.getvalue()
    with ExitStack() as renames:  # every file written before the first is renamed into place
        for out, png in rendered.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            renames.enter_context(atomic_write(out)).write_bytes(png)
    return list(rendered)


def _save(fig: Any, out: Path) -> Path:
    """Write one figure atomically (see `write_figures`)."""
    return write_figures({out: fig})[0]


def spectrum(store: TrajectoryStore, out: Path, reference: TrajectoryStore | None = None,
             windows: int = 4) -> Path:
    """Write `spectrum_figure` to `out`."""
    return _save(spectrum_figure(store, reference, windows), out)


def snapshots(store: TrajectoryStore, out: Path, members: int = SNAPSHOT_MEMBERS, times: int = 3) -> Path:
    """Write `snapshot_figure` to `out`."""
    return _save(snapshot_figure(store, members, times), out)


def report_figures(report: dict[str, Any], folder: Path, u: Units | None = None) -> list[Path]:
    """Write `report_figure_set` into `folder`."""
    return write_figures({folder / name: fig for name, fig in report_figure_set(report, u).items()})


def plot_command(kind: str, store: Path, output: Path, reference: Path | None = None) -> list[Path]:
    """What `sns-engine plot` does: spectrum or snapshots of a store, or `all` evaluation figures
    into the folder `output`. Inputs are checked and every figure is built before any is written."""
    data = TrajectoryStore(store)
    ref = TrajectoryStore(reference) if reference else None
    if ref is not None:
        check_reference(data, ref)
    if kind == "spectrum":
        return [_save(spectrum_figure(data, ref), output)]
    if kind == "snapshots":
        return [_save(snapshot_figure(data), output)]
    if ref is None:
        raise ValueError("plot all needs --reference (the solver store to compare with)")
    figures = {output / "snapshots.png": snapshot_figure(data)}
    for name, fig in report_figure_set(evaluate(store, reference), store_units(data)).items():
        figures[output / name] = fig
    return write_figures(figures)


def calibration(result: dict[str, Any], out: Path) -> Path:
    """Level-head calibration (sns_engine.calibration): estimate vs true level, and on free
    emulator proposals; medians with 10–90 % bands, the identity and the resolving tolerance."""
    levels = np.asarray(result["levels"], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    a.plot(levels, levels, color="0.3", lw=1, label="n̂ = k")
    tol = np.maximum(2.0, 0.25 * levels)
    a.fill_between(levels, np.maximum(levels - tol, 0), levels + tol, color="0.85",
                   label="max(2, 25 %) of k")
    for name, label, colour in (("x_given_clean_y", "n̂_x, y clean", "C0"),
                                ("y_given_clean_x", "n̂_y, x clean", "C1"),
                                ("both_x", "n̂_x, both noised", "C2"),
                                ("both_y", "n̂_y, both noised", "C3")):
        med, lo, hi = (np.array([s[q] for s in result[name]]) for q in ("median", "p10", "p90"))
        a.plot(levels, med, marker="o", ms=3, color=colour, label=label)
        a.fill_between(levels, lo, hi, color=colour, alpha=0.15)
    a.set_xscale("symlog", linthresh=1)
    a.set_yscale("symlog", linthresh=1)
    a.set_ylim(bottom=0)
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
    b.set_ylim(bottom=0)
    b.set_xlabel("free emulator steps from a clean frame")
    b.set_ylabel("estimated level n̂")
    b.set_title("estimates on the emulator's own proposals")
    b.legend(fontsize=8)
    return _save(fig, out)



# ------------------------------------------------------------------------------ studies
FLOOR = "solver"  # the study's solver control ensemble: the floor band of every study figure


def _with_interval(ax: Any, x: list[float], values: list[float], interval: list[list[float]],
                   label: str, floor: bool) -> None:
    """A metric over windows with its bootstrap interval: a grey band for the solver floor, a
    line with a light band for a method."""
    lo, hi = (np.asarray([v[i] for v in interval], dtype=float) for i in (0, 1))
    if floor:
        ax.fill_between(x, lo, hi, color="0.75", alpha=0.6, label=f"{label} (floor), 90 %")
        ax.plot(x, values, color="0.35", lw=1)
    else:
        line, = ax.plot(x, values, "o-", ms=3, label=label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)


def study_figure_set(reports: Mapping[str, dict[str, Any]], u: Units,
                     stores: Mapping[str, tuple[TrajectoryStore, int]]) -> dict[str, Figure]:
    """The figures of a study by file name. Every method against the solver floor band:
    spectrum error, band errors, W1, kinetic energy over time; survival; autocorrelation;
    snapshots of member 0 of every method and of the solver; refinement forwards.
    `stores` maps each label to (store, first snapshot aligned with the methods' first state)."""
    first = next(iter(reports.values()))
    curves = list(first["windows"][0]["spectrum_error"])
    channels = list(u.channels.values())
    time_axis = f"time{_unit(u.time_unit)}"

    def mid(r: dict[str, Any]) -> list[float]:
        return [float(np.mean(w["time"])) / u.time_scale for w in r["windows"]]

    def panel(ax: Any, get: Any, ylabel: str) -> None:
        for label, r in reports.items():
            ws = r["windows"]
            _with_interval(ax, mid(r), [get(w, w) for w in ws], [get(w["interval"], w) for w in ws],
                           label, label == FLOOR)
        ax.set_xlabel(time_axis)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.legend(fontsize=6)

    figures = {}
    n = 2 * len(curves) + len(channels)
    fig = Figure(figsize=(4.8 * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, c in zip(axes, curves, strict=False):
        panel(ax, lambda w, _, c=c: w["spectrum_error"][c], f"spectrum error, {_curve_label(c)}")
    for i, ax in enumerate(axes[len(curves):len(curves) + len(channels)]):
        panel(ax, lambda w, _, i=i: w["w1"][i], f"W1 of the PDF, {channels[i].label}")
    for ax, c in zip(axes[len(curves) + len(channels):], curves, strict=True):
        panel(ax, lambda w, _, c=c: w["energy_ratio"][c], f"{_curve_label(c)} / reference")
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
    fig.suptitle("every method against the solver floor (grey: solver control from the same "
                 "initial states, 90 % bootstrap band over members)")
    figures["error_over_time.png"] = fig

    bands = list(first["windows"][0]["band_error"][curves[0]])
    fig = Figure(figsize=(4.6 * len(bands), 3.9 * len(curves)), layout="constrained")
    grid = fig.subplots(len(curves), len(bands), squeeze=False)
    for row, c in zip(grid, curves, strict=True):
        for ax, b in zip(row, bands, strict=True):
            panel(ax, lambda w, _, c=c, b=b: w["band_error"][c][b], f"{b}-k spectrum error, {c}")
    figures["band_errors.png"] = fig

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for label, r in reports.items():
        surv = r["stability"]["survival"]
        ax.step(np.asarray(surv["time"]) / u.time_scale, surv["fraction"], where="post",
                label=label, **({"color": "0.35", "ls": "--"} if label == FLOOR else {}))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(time_axis)
    ax.set_ylabel("fraction of members stable")
    ax.set_title(f"stability (spectrum error ≤ {first['stability']['threshold']:g}, "
                 "energy in [0.1, 10]× the reference's)")
    ax.legend(fontsize=7)
    figures["survival.png"] = fig

    with_acf = {m: r["autocorrelation"] for m, r in reports.items() if "autocorrelation" in r}
    if with_acf:
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for label, acf in with_acf.items():
            ax.plot(np.asarray(acf["lag_time"]) / u.time_scale, acf["ensemble"], label=label,
                    **({"color": "0.35", "ls": "--"} if label == FLOOR else {}))
        acf = next(iter(with_acf.values()))
        ax.plot(np.asarray(acf["lag_time"]) / u.time_scale, acf["reference"], "k:",
                label="reference")
        ax.axhline(math.exp(-1), color="0.6", lw=0.6)
        ax.set_xlabel(f"lag{_unit(u.time_unit)}")
        ax.set_ylabel("autocorrelation")
        ax.legend(fontsize=7)
        figures["autocorrelation.png"] = fig

    figures["snapshots.png"] = _study_snapshots(stores, u)

    refining = {m: r["moves"] for m, r in reports.items() if r.get("moves", {}).get("value")}
    if refining:
        fig = Figure(figsize=(4 * len(refining), 3.6), layout="constrained")
        for ax, (label, hist) in zip(fig.subplots(1, len(refining), squeeze=False)[0],
                                     refining.items(), strict=True):
            ax.bar(hist["value"], hist["count"], width=1.0)
            ax.set_title(label, fontsize=8)
            ax.set_xlabel("refinement forwards per member-step")
            ax.set_ylabel("count")
        figures["refinement_steps.png"] = fig
    return figures


def _study_snapshots(stores: Mapping[str, tuple[TrajectoryStore, int]], u: Units,
                     times: int = 4, member: int = 0) -> Figure:
    """Member `member` of every store (rows) at `times` aligned saved states (columns), channel 0,
    one symmetric colour scale from the solver's row."""
    rows = list(stores)
    store0, offset0 = stores[rows[0]]
    count = store0.spec.snapshots - offset0
    idx = subsample(count, times)
    data = {label: np.asarray(s.fields[member, idx + off, 0]) for label, (s, off) in stores.items()}
    t = (idx + 1) * store0.spec.snapshot_dt  # the methods' saved state j is (j + 1) intervals in
    limit, _ = _symmetric_limit(data[FLOOR] if FLOOR in data else data[rows[0]])
    channel = next(iter(u.channels.values()))
    side = store0.spec.domain_length / u.length_scale
    fig = Figure(figsize=(2.3 * len(idx) + 1.2, 2.2 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(idx), squeeze=False)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    for r, label in enumerate(rows):
        for j in range(len(idx)):
            ax = axes[r, j]
            image = ax.imshow(data[label][j], cmap=cmap, norm=Normalize(-limit, limit),
                              origin="lower", extent=(0, side, 0, side), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_time(u, float(t[j])), fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    bar = fig.colorbar(image, ax=axes, shrink=0.6, extend="both")
    bar.set_label(channel.label, fontsize=8)
    fig.suptitle(f"member {member} of every method and of the solver from the same initial state")
    return fig


def study_figures(reports: Mapping[str, dict[str, Any]], folder: Path,
                  stores: Mapping[str, tuple[Path, int]]) -> list[Path]:
    """Write `study_figure_set` into `folder` (all or nothing)."""
    opened = {label: (TrajectoryStore(path), offset) for label, (path, offset) in stores.items()}
    u = store_units(next(iter(opened.values()))[0])
    return write_figures({folder / name: fig
                          for name, fig in study_figure_set(reports, u, opened).items()})
