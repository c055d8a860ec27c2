"""The decisive run's table, criterion-2 verdicts and frontier (issue 21), from the study's own
metrics.json.

    python results/refinement-ablation/decisive.py DECISIVE_METRICS PUBLISHED_METRICS OUT_DIR \
        --solver-cpu S [--add METRICS::NAME ...]

The published arm (`left_down`) of the decisive run was stopped at step 1 277 of 3 000, to give
its core to the stride arm. Its rollout is issue 14's (results/kolmogorov-attractor): the same
study settings, initial states, engine seed and bundle. This script checks that where both studies
have the same thing (settings, the solver control's summary, the emulator's per-member stability
times) and then takes issue 14's published arm whole; the partial decisive rollout's stability
times, checked separately (README), agree member for member.
Each --add is a stage-2 decisive study (stage2-plan-5.md: the same settings, solver control and
emulator, checked the same way, another bundle); its methods other than the emulator join the
table as "METHOD @NAME", costed at the decisive run's own CPU seconds per GFLOP.
Writes decisive.json and frontier-decisive.png into OUT_DIR and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import frontier  # noqa: E402

SAME = ("criteria", "horizon", "members", "overrides", "pilot_steps", "preset", "reference_snapshots",
        "reference_spinup", "reference_trajectories", "rollout", "save_every", "seed", "system",
        "trajectory_batch", "windows")


def same_control(a: dict, b: dict) -> bool:
    """Whether two studies' metrics hold the same solver control (so the same initial states):
    its last-window floor, equal up to rounding (evaluations may sum in another order)."""
    def floor(m: dict) -> list[float]:
        last = m["methods"]["solver"]["summary"]["last"]
        return [*last["band_error"]["energy"].values(), *last["w1"], last["energy_ratio"]["energy"]]

    return all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(floor(a), floor(b), strict=True))


def check_same_runs(decisive: dict, published: dict) -> None:
    """Refuse unless the two studies ran the same settings, solver control and emulator."""
    a, b = decisive["study"], published["study"]
    differ = [k for k in SAME if a.get(k) != b.get(k)]
    if differ:
        raise SystemExit(f"the studies differ in {differ}")

    def emulator(m: dict) -> list:
        return m["methods"]["emulator"]["report"]["stability"]["times"]

    if not same_control(decisive, published) or emulator(decisive) != emulator(published):
        raise SystemExit("the studies' solver control or emulator differ: not the same runs")


def criterion_2(row: dict, solver_energy: float, criteria: dict) -> dict:
    """Criterion 2 of the attractor study, part by part."""
    parts = {"stable": row["stable_at_horizon"] >= criteria["drift_unstable_fraction"],
             "errors": row["worst_x_floor"] <= criteria["attractor_floor_factor"],
             "energy": abs(row["energy_ratio"] / solver_energy - 1) <= criteria["energy_tolerance"]}
    return {**parts, "met": all(parts.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("decisive", type=Path)
    parser.add_argument("published", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--solver-cpu", type=float, required=True,
                        help="CPU s per member-time-unit of the solver (frontier.solver_cost)")
    parser.add_argument("--add", action="append", default=[], metavar="METRICS::NAME",
                        help="a stage-2 decisive study whose arms join the table as 'METHOD @NAME'")
    args = parser.parse_args()
    metrics = json.loads(args.decisive.read_text())
    flops = frontier.pass_gflop(metrics["study"]["bundle"])
    # every added arm's cost in CPU seconds comes from its GFLOP and the decisive run's rates
    rate = frontier.cpu_rates(metrics, flops)
    published = json.loads(args.published.read_text())
    check_same_runs(metrics, published)
    metrics["methods"]["left_down"] = published["methods"]["left_down"]
    for spec in args.add:
        path, name = spec.split("::")
        stage2 = json.loads(Path(path).read_text())
        check_same_runs(metrics, stage2)
        metrics["methods"].update({f"{label} @{name}": entry for label, entry in stage2["methods"].items()
                                   if label not in ("emulator", "solver")})
    rows = frontier.frontier(metrics, args.solver_cpu, flops, rate)
    solver = metrics["methods"]["solver"]["summary"]["last"]["energy_ratio"]["energy"]
    for row in rows:
        row["criterion_2"] = criterion_2(row, solver, metrics["study"]["criteria"])
        row["stability_times"] = metrics["methods"][row["method"]]["report"]["stability"]["times"]
    args.out.mkdir(parents=True, exist_ok=True)
    horizon = metrics["methods"]["left_down"]["summary"]["horizon_time"]
    frontier.plot(rows, horizon, args.out / "frontier-decisive.png")
    (args.out / "decisive.json").write_text(json.dumps(
        {"solver_cpu_per_member_time_unit": args.solver_cpu, "solver_energy_ratio": solver,
         "published_from": str(args.published), "added": args.add, "rows": rows}, indent=1) + "\n")
    print("| arm | stable at horizon | median stability [90 %] | vs published (longer/shorter/tied) "
          "| worst metric × floor [90 %] | KE / reference | GFLOP / member-step | cost vs solver "
          "| criterion 2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["cost_vs_solver"]):
        v = r["vs_published"]
        c2 = r["criterion_2"]
        verdict = "met" if c2["met"] else "missed: " + ", ".join(k for k in ("stable", "errors", "energy")
                                                                if not c2[k])
        print(f"| {r['method']} | {r['stable_at_horizon']:.0%} | {r['median_stability']:.2f} "
              f"[{r['median_interval'][0]:.2f}, {r['median_interval'][1]:.2f}] "
              f"| {v['longer']}/{v['shorter']}/{v['tied']} | {r['worst_x_floor']:.3g} "
              f"[{r['worst_interval'][0]:.3g}, {r['worst_interval'][1]:.3g}] ({r['worst_metric']}) "
              f"| {r['energy_ratio']:.3g} | {r['gflop_per_member_step']:.2f} "
              f"| {r['cost_vs_solver']:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
