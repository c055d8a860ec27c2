"""What every figure shares: names and units of fields and times (`sns_engine.data.cf`),
the reference check, colour limits, count histograms, and all-or-nothing PNG writes.

A nondimensional system's times read "time units" on every axis. Figures are built first and
written last (`write_figures`): all of them are rendered to PNG in memory, written to temporary
files beside their targets and only then renamed into place, so a bad store or reference, a
rendering error or a full disk leaves no partial or half-written figure behind.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from sns_engine.data.cf import Units, units
from sns_engine.data.store import StoreError, TrajectoryStore
from sns_engine.files import atomic_write

DPI = 110
# the spectra of diagnostics.evaluate.field_spectra, by curve name: what they are, from which channel
CURVES = {"energy": ("kinetic energy", "vorticity"),
          "energy_upper": ("upper-layer kinetic energy", "q_upper"),
          "energy_lower": ("lower-layer kinetic energy", "q_lower")}
SYMLOG_FROM = 10  # count histograms over values beyond 5× this get a symlog value axis


def store_units(store: TrajectoryStore) -> Units:
    """The display names and units of `store`'s system and channels."""
    return units(store.spec.system, store.spec.channel_names)


def unit_suffix(text: str) -> str:
    """' (text)', or '' for no unit."""
    return f" ({text})" if text else ""


def time_unit(u: Units) -> str:
    """The unit of time on axes: the system's, or 'time units' for a nondimensional one."""
    return u.time_unit or "time units"


def time_axis(u: Units, what: str = "time") -> str:
    """An axis label of time: 'time (days)', 'lag (time units)'."""
    return f"{what} ({time_unit(u)})"


def time_label(u: Units, t: float) -> str:
    """'t = 2.5 days' (no unit for a nondimensional system)."""
    return f"t = {t / u.time_scale:.4g}" + (f" {u.time_unit}" if u.time_unit else "")


def window_label(u: Units, lo: float, hi: float) -> str:
    """'t ∈ [0, 2.5] days' (no unit for a nondimensional system)."""
    return (f"t ∈ [{lo / u.time_scale:.4g}, {hi / u.time_scale:.4g}]"
            + (f" {u.time_unit}" if u.time_unit else ""))


def curve_label(name: str) -> str:
    """What a spectrum curve is: 'kinetic energy', 'upper-layer kinetic energy'."""
    return CURVES.get(name, (name, None))[0]


def curve_source(u: Units, name: str) -> str | None:
    """Where a spectrum comes from, e.g. 'computed from ω vorticity (1/time unit)'; None where
    unknown."""
    channel = u.channels.get(CURVES.get(name, (name, ""))[1])
    return f"computed from {channel.label}" if channel else None


def check_reference(store: TrajectoryStore, reference: TrajectoryStore) -> None:
    """Raise StoreError unless `reference` holds the same system, channels, grid and domain as
    `store` (so their spectra and fields can be compared)."""
    for key in ("system", "channel_names", "grid", "domain_length"):
        mine, theirs = getattr(store.spec, key), getattr(reference.spec, key)
        if mine != theirs:
            raise StoreError(f"{store.path} has {key}={mine!r} but the reference {reference.path} has "
                             f"{theirs!r}; pass the solver store the ensemble was trained on")


def symmetric_limit(values: np.ndarray) -> tuple[float, bool]:
    """A symmetric colour limit (99.9th percentile of |finite values|) and whether values lie
    beyond it."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0, False
    limit = float(np.percentile(finite, 99.9)) or float(finite.max()) or 1.0
    return limit, bool(finite.max() > limit)


def count_histogram(ax: Any, hist: Mapping[str, list[int]], label: str) -> None:
    """Counts per integer value (`hist`: value, count) as stems with a dot on a log count axis,
    so a count of 1 beside one of 10⁵ still shows; values spanning beyond 5 × SYMLOG_FROM get a
    symlog value axis (linear to SYMLOG_FROM, logarithmic beyond), said in the axis label, so one
    far outlier does not squeeze the rest into a line."""
    values, counts = np.asarray(hist["value"]), np.asarray(hist["count"])
    ax.vlines(values, 0.5, counts, lw=1.2)
    ax.plot(values, counts, "o", ms=2.5)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_ylabel("count (log axis)")
    top = float(values.max()) if values.size else 1.0
    if top > 5 * SYMLOG_FROM:
        ax.set_xscale("symlog", linthresh=SYMLOG_FROM, linscale=1.5)
        label += f"\n(symlog axis: linear to {SYMLOG_FROM}, logarithmic beyond)"
    ax.set_xlim(-0.5, top * 1.3 if top > 5 * SYMLOG_FROM else top + 0.5)
    ax.set_xlabel(label)


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
        rendered[Path(out)] = buffer.getvalue()
    with ExitStack() as renames:  # every file written before the first is renamed into place
        for out, png in rendered.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            renames.enter_context(atomic_write(out)).write_bytes(png)
    return list(rendered)


def save(fig: Any, out: Path) -> Path:
    """Write one figure atomically (see `write_figures`)."""
    return write_figures({out: fig})[0]
