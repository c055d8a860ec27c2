"""Activation-threshold ablation of a CPU study: one path rolled out again with other thresholds.

Same bundle, held-out initial conditions, members, horizon and evaluation as the study in
out/study-{system} (read from its study.json); one rollout per threshold, summarised like the
study's methods (study.summarize) in results/{system}-cpu/ablation_{path}_threshold{T}.json, or
..._threshold{T}_seed{S}.json for another noise seed (to see the run-to-run spread). A rollout
already complete in out/ablation/ is re-evaluated, not rerun, and keeps its measured cost. Run from
the repository root once the study exists:

    OMP_NUM_THREADS=1 python results/ablation_threshold.py kolmogorov left_down 1 2 3 5
    OMP_NUM_THREADS=1 python results/ablation_threshold.py kolmogorov left_down 3 5 10 --seed 1
    OMP_NUM_THREADS=1 python results/ablation_threshold.py qg fix_short 1 3
"""

import argparse
import dataclasses
import json
from pathlib import Path

from sns_engine.bundle import load_bundle
from sns_engine.config import from_dict
from sns_engine.diagnostics.evaluate import evaluate
from sns_engine.study import StudyConfig, held_out_initial, roll_out, summarize

parser = argparse.ArgumentParser()
parser.add_argument("system", choices=["kolmogorov", "qg"])
parser.add_argument("path")
parser.add_argument("thresholds", type=int, nargs="+")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

study = Path(f"out/study-{args.system}")
settings = from_dict(StudyConfig, json.loads((study / "study.json").read_text()))
reference = study / "data" / "reference.zarr"
bundle = load_bundle(study / "bundle", "cpu")
initial = held_out_initial(reference, settings.members)

for threshold in args.thresholds:
    name = f"ablation_{args.path}_threshold{threshold}" + (f"_seed{args.seed}" if args.seed else "")
    store = Path("out/ablation") / f"{args.system}_{name}.zarr"
    summary_file = Path(__file__).parent / f"{args.system}-cpu" / f"{name}.json"
    variant = dataclasses.replace(settings, seed=args.seed,
                                  rollout={**settings.rollout, "threshold": threshold})
    cost = roll_out(variant, args.path, bundle, initial, store, resume=store.exists())
    if not cost["physical_steps_measured"] and summary_file.exists():
        cost = json.loads(summary_file.read_text())["cost"]  # complete before: keep its measurement
    report = evaluate(store, reference, windows=settings.windows, threshold=settings.stability_threshold)
    levels = report["levels"]["n_x"]
    summary = {
        "what": f"{args.path} with activation threshold {threshold} (study: "
                f"{settings.rollout.get('threshold', 10)}), noise seed {args.seed}, otherwise as "
                f"the {args.system} study; made by results/ablation_threshold.py",
        "cost": cost,
        "summary": summarize(report, cost),
        "refined_share": sum(c for v, c in zip(levels["value"], levels["count"], strict=True)
                             if v >= threshold) / sum(levels["count"]),
        "stability_times": report["stability"]["times"],
        "decorrelation_time": report["autocorrelation"]["decorrelation_time"],
    }
    summary_file.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("what", "refined_share")} | summary["summary"], indent=1))
