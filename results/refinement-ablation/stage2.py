"""Stage 2's verdicts (stage2-plan.md, H6–H8): each stage-2 arm paired by member against its
stage-1 counterpart of the committed pilot, from the studies' own metrics.json.

    python results/refinement-ablation/stage2.py PILOT_METRICS OUT_JSON \
        STAGE2_METRICS::ARM::COUNTERPART::RULE ...

RULE is `stability` (H6, H8: better = stable longer for >= 6 of 8 members and a higher median,
worse = longer for <= 2 of 8), `error` (H7: worse = higher last-window spectrum error for
>= 6 of 8 members, better = lower for >= 6 of 8; a member stable for less time than its
counterpart counts as worse whatever its error) or `paired` (stage2-plan-5.md, any member count:
a member is better if stable longer, or stable to the horizon in both and lower in last-window
spectrum error, worse in the mirror case; better = more better members than worse with a
two-sided sign-test p <= 0.05 over the untied pairs, worse = the mirror). Refuses unless the two
studies ran the same settings from the same initial states: the emulator's per-member stability
times (same weights) must be equal, or, with --own-emulator (a stage-2 bundle with an emulator of
its own, stage2-plan-7.md), the solver control's last-window floor. Writes OUT_JSON and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from decisive import SAME, same_control  # noqa: E402  (what two studies must share)

from sns_engine.diagnostics.statistics import sign_test  # noqa: E402


def stability(metrics: dict, method: str, horizon: float) -> list[float]:
    """Per-member stability times, a member stable to the horizon censored at it."""
    times = metrics["methods"][method]["report"]["per_member"]["stability_time"]
    return [horizon if t is None else t for t in times]


def last_error(metrics: dict, method: str) -> list[float]:
    return metrics["methods"][method]["report"]["per_member"]["last_window_spectrum_error"]["energy"]


def check_same_runs(pilot: dict, stage2: dict, own_emulator: bool = False) -> None:
    """Refuse unless both studies ran the same settings and initial states: the same emulator's
    stability times, or (`own_emulator`) the same solver control."""
    differ = [k for k in SAME if pilot["study"].get(k) != stage2["study"].get(k)]
    if differ:
        raise SystemExit(f"the studies differ in {differ}")
    if own_emulator:
        if not same_control(pilot, stage2):
            raise SystemExit("the solver controls differ: not the same initial states")
    elif stability(pilot, "emulator", 0) != stability(stage2, "emulator", 0):
        raise SystemExit("the emulator's stability times differ: not the same initial states")


def paired(arm: list[float], counterpart: list[float], arm_err: list[float],
           counterpart_err: list[float], horizon: float) -> dict:
    """stage2-plan-5.md's paired rule: per member better (-1), worse (+1) or tied (0), and the
    sign test of those scores against 0."""
    def score(a: float, b: float, e: float, c: float) -> int:
        if a != b:
            return -1 if a > b else 1
        return -1 if a >= horizon and e < c else 1 if a >= horizon and e > c else 0
    scores = [score(*m) for m in zip(arm, counterpart, arm_err, counterpart_err, strict=True)]
    test = sign_test(scores, [0] * len(scores))
    verdict = "undecided"
    if test["p_value"] <= 0.05:
        verdict = "better" if test["wins"] > test["losses"] else "worse"
    return {"better_members": test["wins"], "worse_members": test["losses"],
            "sign_test_p": test["p_value"], "verdict": verdict}


def verdict(arm: list[float], counterpart: list[float], arm_err: list[float],
            counterpart_err: list[float], rule: str, horizon: float) -> dict:
    """The stage-2 plan's rule, with the counts it rests on."""
    longer = sum(a > b for a, b in zip(arm, counterpart, strict=True))
    shorter = sum(a < b for a, b in zip(arm, counterpart, strict=True))
    out = {"longer": longer, "shorter": shorter, "tied": len(arm) - longer - shorter,
           "median": statistics.median(arm), "counterpart_median": statistics.median(counterpart)}
    if rule == "paired":
        return {**out, **paired(arm, counterpart, arm_err, counterpart_err, horizon)}
    if rule == "stability":
        better = longer >= 6 and out["median"] > out["counterpart_median"]
        worse = longer <= 2
    else:
        worse_members = [a < b or (a == b and e > c) for a, b, e, c
                         in zip(arm, counterpart, arm_err, counterpart_err, strict=True)]
        lower = sum(a >= b and e < c for a, b, e, c
                    in zip(arm, counterpart, arm_err, counterpart_err, strict=True))
        out.update(higher_error=sum(worse_members), lower_error=lower)
        worse, better = sum(worse_members) >= 6, lower >= 6
    out["verdict"] = "better" if better else "worse" if worse else "undecided"
    return out


def paired_counts(row: dict) -> str:
    if row["rule"] != "paired":
        return ""
    return f" ({row['better_members']} better / {row['worse_members']} worse, p = {row['sign_test_p']:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pilot", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("pairs", nargs="+", help="STAGE2_METRICS::ARM::COUNTERPART::RULE")
    parser.add_argument("--own-emulator", action="store_true",
                        help="the stage-2 bundles have emulators of their own: check the solver "
                             "control instead of the emulator's stability times")
    args = parser.parse_args()
    pilot = json.loads(args.pilot.read_text())
    rows = []
    for pair in args.pairs:
        path, arm, counterpart, rule = pair.split("::")
        if rule not in ("stability", "error", "paired"):
            raise SystemExit(f"{pair}: rule must be stability, error or paired, not {rule}")
        stage2 = json.loads(Path(path).read_text())
        check_same_runs(pilot, stage2, args.own_emulator)
        horizon = stage2["methods"][arm]["summary"]["horizon_time"]
        times, base = stability(stage2, arm, horizon), stability(pilot, counterpart, horizon)
        row = {"study": path, "arm": arm, "counterpart": counterpart, "rule": rule,
               "stability_times": times, "counterpart_times": base,
               "last_error": last_error(stage2, arm),
               "counterpart_last_error": last_error(pilot, counterpart),
               "summary": stage2["methods"][arm]["summary"],
               **verdict(times, base, last_error(stage2, arm), last_error(pilot, counterpart), rule,
                          horizon)}
        rows.append(row)
    args.out.write_text(json.dumps({"pilot": str(args.pilot), "rows": rows}, indent=1) + "\n")
    print("| arm | vs pilot's | stable at horizon | median stability | longer / shorter / tied "
          "| median last-window spectrum error (pilot's) | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        stable = sum(t >= r["summary"]["horizon_time"] for t in r["stability_times"])
        errors = [e for e in r["last_error"] if math.isfinite(e)]
        print(f"| {r['arm']} ({r['study']}) | {r['counterpart']} | {stable} of {len(r['stability_times'])} "
              f"| {r['median']:.2f} ({r['counterpart_median']:.2f}) "
              f"| {r['longer']} / {r['shorter']} / {r['tied']} "
              f"| {statistics.median(errors):.3g} ({statistics.median(r['counterpart_last_error']):.3g}) "
              f"| {r['verdict']}{paired_counts(r)} |")


if __name__ == "__main__":
    main()
