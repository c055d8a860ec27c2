"""Ablation of the Kolmogorov study: `left_down` with other activation thresholds (study: 10).

Same bundle, held-out initial conditions and horizon as the study's left_down rollout; one rollout
per threshold given, each summarised in ablation_threshold{T}.json (seed 0, the study's) or
ablation_threshold{T}_seed{S}.json (another noise seed, to see the run-to-run spread). Run from
the repository root once the study is in out/study-kolmogorov:

    OMP_NUM_THREADS=1 python results/kolmogorov-cpu/ablation_threshold.py 1 2 3 5
    OMP_NUM_THREADS=1 python results/kolmogorov-cpu/ablation_threshold.py 3 10 --seed 1
"""

import argparse
import json
import time
from pathlib import Path

from sns_engine.bundle import load_bundle
from sns_engine.diagnostics.evaluate import evaluate
from sns_engine.engine.ensemble import rollout
from sns_engine.study import held_out_initial, rollout_cost

study = Path("out/study-kolmogorov")
reference = study / "data" / "reference.zarr"

parser = argparse.ArgumentParser()
parser.add_argument("thresholds", type=int, nargs="+")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

for threshold in args.thresholds:
    name = f"threshold{threshold}" + (f"_seed{args.seed}" if args.seed else "")
    store = Path(f"out/ablation/left_down_{name}.zarr")
    start = time.perf_counter()
    result = rollout(load_bundle(study / "bundle", "cpu"), batch=8, steps=2400, path="left_down",
                     initial=held_out_initial(reference, 8), out=store, seed=args.seed, save_every=10,
                     threshold=threshold, overwrite=True, quiet=True)
    cost = rollout_cost(result.stats, time.perf_counter() - start, 8)
    report = evaluate(store, reference, windows=6, threshold=1.0)
    levels = report["levels"]["n_x"]
    summary = {
        "what": f"left_down with activation threshold {threshold} (study: 10), same bundle, initial "
                f"conditions and horizon, noise seed {args.seed}; made by ablation_threshold.py",
        "cost": cost,
        "window_times": [w["time"] for w in report["windows"]],
        "spectrum_error_per_window": [w["spectrum_error"]["energy"] for w in report["windows"]],
        "w1_per_window": [w["w1"][0] for w in report["windows"]],
        "stability": {k: report["stability"][k]
                      for k in ("threshold", "times", "median", "survival_at_horizon")},
        "moves_mean": report["moves"]["mean"],
        "n_x_share_at_or_above_threshold": sum(
            c for v, c in zip(levels["value"], levels["count"], strict=True) if v >= threshold)
            / sum(levels["count"]),
        "decorrelation_time": report["autocorrelation"]["decorrelation_time"],
    }
    out = Path(__file__).with_name(f"ablation_{name}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
