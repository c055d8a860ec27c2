"""What the level heads read along each refined rollout of the study, window by window.

    python results/kolmogorov-attractor/level_histograms.py STUDY_DIR [OUT_DIR]

For every rollout store with estimated levels (SNS paths, Thermalizers) and each of the study's
windows: the median and 10–90 % range of n̂_x and n̂_y over the alive members' steps, the share of
steps with n̂_x at or above the calibrated threshold and at or above 20, and the moves spent per
member-step; beside them the calibration's clean-frame reading (plan.json). Writes level_histograms.json and
level_histograms.png into OUT_DIR (default: STUDY_DIR).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sns_engine.data import TrajectoryStore  # noqa: E402

study = Path(sys.argv[1])
out = Path(sys.argv[2]) if len(sys.argv) > 2 else study
plan = json.loads((study / "plan.json").read_text())
settings = json.loads((study / "study.json").read_text())
windows = settings["windows"]
threshold = plan["calibration"]["threshold"]
STEP_TIME = 0.005  # time units per model step of the Kolmogorov `cpu` preset (save_every 10 = 0.05)
summary, curves = {}, {}
for store_path in sorted((study / "rollouts").glob("*.zarr")):
    store = TrajectoryStore(store_path)
    if "levels" not in store.root:
        continue
    levels = np.asarray(store.root["levels"][:])          # (B, steps, 2), −1 where not estimated
    moves = np.asarray(store.root["moves"][:])
    done = int((levels[..., 0] >= 0).any(axis=0).nonzero()[0].max()) + 1 if (levels >= 0).any() else 0
    if done == 0:
        continue
    label = store_path.stem
    steps = levels.shape[1]
    per_window = []
    for w in range(windows):
        a, b = w * steps // windows, min((w + 1) * steps // windows, done)
        if a >= b:
            break
        n_x, n_y = levels[:, a:b, 0], levels[:, a:b, 1]
        alive = n_x >= 0
        x, y = n_x[alive], n_y[alive]
        per_window.append({
            "steps": [a, b], "alive_member_steps": int(alive.sum()),
            "n_x": {"median": float(np.median(x)), "p10": float(np.percentile(x, 10)),
                    "p90": float(np.percentile(x, 90)), "max": int(x.max())},
            "n_y": {"median": float(np.median(y)), "p10": float(np.percentile(y, 10)),
                    "p90": float(np.percentile(y, 90)), "max": int(y.max())},
            "share_at_threshold": float((x >= threshold).mean()),
            "share_at_20": float((x >= 20).mean()),
            "moves_per_member_step": float(moves[:, a:b][alive].mean()),
        })
    summary[label] = {"steps_done": done, "windows": per_window}
    curves[label] = levels[:, :done, 0]

(out / "level_histograms.json").write_text(json.dumps(
    {"calibration": plan["calibration"], "methods": summary}, indent=1))

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
BLOCK = 25  # model steps pooled per point of the time series
for label, n_x in curves.items():
    blocks = n_x.shape[1] // BLOCK
    pooled = np.where(n_x >= 0, n_x, np.nan)[:, :blocks * BLOCK].reshape(len(n_x), blocks, BLOCK)
    pooled = pooled.transpose(1, 0, 2).reshape(blocks, -1)
    t = (np.arange(blocks) + 0.5) * BLOCK * STEP_TIME
    line, = axes[0].plot(t, np.nanmedian(pooled, axis=1), label=label, lw=1.2)
    axes[0].fill_between(t, np.nanpercentile(pooled, 10, axis=1), np.nanpercentile(pooled, 90, axis=1),
                         color=line.get_color(), alpha=0.15, lw=0)
cal = plan["calibration"]["n_x"]
axes[0].axhspan(cal["p10"], cal["p90"], color="k", alpha=0.15, label="clean frames, 10–90 %")
axes[0].axhline(threshold, color="k", ls="--", lw=0.8, label=f"calibrated threshold {threshold}")
axes[0].set_yscale("symlog", linthresh=1)
axes[0].set(xlabel="time (t.u.)", ylabel=f"n̂_x: median, 10–90 % (alive members, {BLOCK} steps)",
            ylim=(0, None), title="what the x head reads along the rollout")
axes[0].legend(fontsize=7, loc="upper left")
for label, n_x in curves.items():
    x = n_x[n_x >= 0]
    axes[1].hist(x, bins=np.arange(0, max(x.max(), 30) + 2) - 0.5, histtype="step", density=True,
                 label=label)
axes[1].axvline(threshold, color="k", ls="--", lw=0.8)
axes[1].set_xscale("symlog", linthresh=1)
axes[1].set(xlabel="n̂_x", ylabel="share of member-steps", yscale="log", xlim=(0, None),
            title="n̂_x over the whole rollout")
axes[1].legend(fontsize=7, loc="upper right")
fig.tight_layout()
fig.savefig(out / "level_histograms.png", dpi=120)
for label, s in summary.items():
    print(label, s["steps_done"], [(w["n_x"]["median"], w["n_x"]["p90"], round(w["share_at_threshold"], 3))
                                   for w in s["windows"]])
