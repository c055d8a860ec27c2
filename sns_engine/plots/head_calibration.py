"""The level heads' calibration figure (`sns_engine.calibration`): estimated against true level
on held-out frames, and on the emulator's own free proposals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sns_engine.plots.common import save

SYMLOG = "symlog axis: linear below 1, logarithmic above"


def calibration(result: dict[str, Any], out: Path) -> Path:
    """Level-head calibration (sns_engine.calibration): estimate vs true level, and on free
    emulator proposals; medians with 10–90 % bands, the identity and the resolving tolerance."""
    levels = np.asarray(result["levels"], dtype=float)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    a, b = fig.subplots(1, 2)
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
    a.set_xlabel(f"true noise level k (0 = clean)\n({SYMLOG})")
    a.set_ylabel(f"estimated level n̂ (argmax of the head)\n({SYMLOG})")
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
    b.set_xlabel("free emulator steps from a clean frame (log axis)")
    b.set_ylabel(f"estimated level n̂\n({SYMLOG})")
    b.set_title("estimates on the emulator's own proposals")
    b.legend(fontsize=8)
    return save(fig, out)
