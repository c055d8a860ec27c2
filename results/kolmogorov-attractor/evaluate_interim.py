"""Interim look at an unfinished study (NOT its pre-registered verdict).

    python results/kolmogorov-attractor/evaluate_interim.py SAVED_STATES [STUDY_DIR]

The first SAVED_STATES saved states of every rollout that has them (flags and flag times within
that span kept), and of the solver control (from its second state, as the study evaluates it),
are copied into stores under STUDY_DIR/../interim/ and evaluated like the study: same reference,
windows of 30 saved states. Prints a summary; writes interim_<SAVED_STATES>.json beside them.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from sns_engine.data import TrajectoryStore
from sns_engine.diagnostics.evaluate import evaluate

saved = int(sys.argv[1])
study = Path(sys.argv[2] if len(sys.argv) > 2 else "out/attractor/study")
folder = study.parent / "interim"
SOURCES = {"solver": ("data/control.zarr", 1), "emulator": ("rollouts/emulator.zarr", 0),
           "left_down": ("rollouts/left_down.zarr", 0),
           "thermalizer[match=left_down]": ("rollouts/thermalizer-match-left_down.zarr", 0),
           "left_down[threshold=calibrated]": ("rollouts/left_down-threshold-calibrated.zarr", 0),
           "thermalizer": ("rollouts/thermalizer.zarr", 0), "fix_short": ("rollouts/fix_short.zarr", 0)}


def copy_span(src: TrajectoryStore, start: int, path: Path) -> Path:
    """The first `saved` states of `src` (from `start`) as a store of their own."""
    data = np.asarray(src.fields[:, start:start + saved])
    spec = dataclasses.replace(src.spec, snapshots=saved, trajectory_batch=1,
                               time_chunk=min(32, saved))
    dst = TrajectoryStore.create(path, spec, overwrite=True)
    for i in range(spec.trajectories):
        dst.write(i, 0, data[i:i + 1])
        dst.root["progress"][i] = saved
    steps = saved * src.root.attrs.get("rollout", {}).get("save_every", 1)
    for key in ("levels", "moves"):
        if key in src.root:
            dst.root.create_array(key, data=np.asarray(src.root[key][:, :steps]))
    if "flags" in src.root:  # a member flagged (and frozen) within the span stays flagged
        at = np.asarray(src.root["flagged_at"][:])
        inside = (at >= 0) & (at < steps)
        dst.root.create_array("flags", data=np.where(inside, np.asarray(src.root["flags"][:]), 0))
        dst.root.create_array("flagged_at", data=np.where(inside, at, -1))
    if "rollout" in src.root.attrs:
        dst.root.attrs["rollout"] = src.root.attrs["rollout"]  # save_every: flag times in steps
    dst.finalise()
    return path


reports = {}
for name, (relative, start) in SOURCES.items():
    if not (study / relative).exists():
        print(f"{name}: not started, skipped")
        continue
    src = TrajectoryStore(study / relative)
    if not np.isfinite(np.asarray(src.fields[:, start + saved - 1])).all():
        print(f"{name}: fewer than {saved} saved states, skipped")
        continue
    path = copy_span(src, start, folder / f"{Path(relative).stem}.zarr")
    r = reports[name] = evaluate(path, study / "data/reference.zarr", windows=saved // 30)
    print(f"{name}: stable at the end {r['stability']['survival_at_horizon']:.0%}, median stability "
          f"time {r['stability']['median']}")
    for w in r["windows"]:
        lo, hi = w["interval"]["spectrum_error"]["energy"]
        bands = "/".join(f"{v:.2f}" for v in w["band_error"]["energy"].values())
        print(f"  {w['time'][0]:4.1f}–{w['time'][1]:4.1f} spectrum error "
              f"{w['spectrum_error']['energy']:.3f} [{lo:.3f}, {hi:.3f}] bands {bands} "
              f"W1 {w['w1'][0]:.3f} KE {w['energy_ratio']['energy']:.3f}")
json.dump(reports, open(folder / f"interim_{saved}.json", "w"))
