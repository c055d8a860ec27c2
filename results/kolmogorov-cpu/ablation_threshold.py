"""Ablation of the Kolmogorov study: `left_down` with activation threshold 3 instead of 10.

Same bundle, held-out initial conditions, seed and horizon as the study's left_down rollout. Run
from the repository root once the study is in out/study-kolmogorov:

    OMP_NUM_THREADS=1 python results/kolmogorov-cpu/ablation_threshold.py
"""

import json
import time
from pathlib import Path

from sns_engine.bundle import load_bundle
from sns_engine.diagnostics.evaluate import evaluate
from sns_engine.engine.ensemble import rollout
from sns_engine.study import held_out_initial, rollout_cost

THRESHOLD = 3
study = Path("out/study-kolmogorov")
reference = study / "data" / "reference.zarr"
store = Path("out/ablation/left_down_threshold.zarr")

start = time.perf_counter()
result = rollout(load_bundle(study / "bundle", "cpu"), batch=8, steps=2400, path="left_down",
                 initial=held_out_initial(reference, 8), out=store, seed=0, save_every=10,
                 threshold=THRESHOLD, overwrite=True, quiet=True)
cost = rollout_cost(result.stats, time.perf_counter() - start, 8)
report = evaluate(store, reference, windows=6, threshold=1.0)
levels = report["levels"]["n_x"]
summary = {
    "what": f"left_down with activation threshold {THRESHOLD} (study: 10), same bundle, initial "
            "conditions, seed and horizon; made by ablation_threshold.py",
    "cost": cost,
    "window_times": [w["time"] for w in report["windows"]],
    "spectrum_error_per_window": [w["spectrum_error"]["energy"] for w in report["windows"]],
    "w1_per_window": [w["w1"][0] for w in report["windows"]],
    "stability": {k: report["stability"][k]
                  for k in ("threshold", "times", "median", "survival_at_horizon")},
    "moves_mean": report["moves"]["mean"],
    "n_x_share_at_or_above_threshold": sum(
        c for v, c in zip(levels["value"], levels["count"], strict=True) if v >= THRESHOLD)
        / sum(levels["count"]),
    "decorrelation_time": report["autocorrelation"]["decorrelation_time"],
}
out = Path(__file__).with_name(f"ablation_threshold{THRESHOLD}.json")
out.write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
