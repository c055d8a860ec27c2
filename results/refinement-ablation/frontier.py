"""The cost–fidelity frontier of a study: every method a point, the solver at (1, 1).

    python results/refinement-ablation/frontier.py STUDY_METRICS_JSON OUT_DIR [--solver-cpu S]

x: CPU seconds per member and simulated time unit, relative to the solver's. A method's: its GFLOP
per member-step over the whole rollout × the CPU seconds per GFLOP pooled over the rollouts one
invocation ran whole (so a rollout resumed after a kill is costed right); the solver's:
`solver_cost` times the jax-cfd solver the control ran, 8 trajectories vmapped, on this machine,
unless --solver-cpu gives a measured figure.
y: the worst last-window metric × the solver floor (every band error and W1, each divided by the
solver control's), with the 90 % bootstrap interval of that metric; and the median stability time
with a 90 % bootstrap interval over members (members stable to the horizon count at the horizon).
Writes frontier.png and frontier.json into OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np


def solver_cost(members: int = 8, model_steps: int = 200) -> float:
    """CPU seconds per member and simulated time unit of the Kolmogorov `cpu` solver (jax-cfd,
    128², 5 solver steps per model step), `members` trajectories vmapped, as the data stage runs."""
    import jax

    from sns_engine.systems import get_system

    system = get_system("kolmogorov", "cpu", spinup_steps=0)
    state = system.initial_states(list(range(members)))
    state, _ = system.advance(state, 1)              # compile outside the timing
    jax.block_until_ready(state)
    start = time.process_time()
    state, _ = system.advance(state, model_steps)
    jax.block_until_ready(state)
    cpu = time.process_time() - start
    return cpu / (members * model_steps * system.snapshot_dt)


def worst_metric(last: dict, floor: dict) -> tuple[float, float, float, str]:
    """(value, low, high) of the worst last-window metric × floor, and its name."""
    rows = []
    for band, value in last["band_error"]["energy"].items():
        lo, hi = last["interval"]["band_error"]["energy"][band]
        ref = floor["band_error"]["energy"][band]
        rows.append((value / ref, lo / ref, hi / ref, f"{band}-k spectrum"))
    for c, value in enumerate(last["w1"]):
        lo, hi = last["interval"]["w1"][c]
        rows.append((value / floor["w1"][c], lo / floor["w1"][c], hi / floor["w1"][c], f"W1 channel {c}"))
    return max(rows)


def median_interval(times: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of per-member stability times with a 90 % bootstrap interval."""
    t = np.asarray(times, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(t), (resamples, len(t)))
    medians = np.median(t[draws], axis=1)
    return float(np.median(t)), float(np.quantile(medians, 0.05)), float(np.quantile(medians, 0.95))


def paired(times: list, against: list, horizon: float) -> dict[str, int]:
    """Members stable longer / shorter / as long as in `against` (same initial states); a member
    stable to the horizon (None) counts as the horizon, so two such members tie."""
    a = np.array([horizon if t is None else t for t in times])
    b = np.array([horizon if t is None else t for t in against])
    return {"longer": int((a > b).sum()), "shorter": int((a < b).sum()), "tied": int((a == b).sum())}


def pass_gflop(bundle: str) -> dict[str, float]:
    """GFLOP per member of the emulator, the refiner's full forward and its levels-only pass."""
    from sns_engine.bundle import load_bundle
    from sns_engine.engine.denoiser import refiner_denoiser
    from sns_engine.engine.rollout import member_flops

    loaded = load_bundle(bundle)
    per = member_flops(loaded.model("emulator"), refiner_denoiser(loaded.model("refiner")))()
    return {"emulator": per.emulator / 1e9, "forward": per.forward / 1e9, "levels": per.levels / 1e9}


def whole_run_gflop(cost: dict, report: dict, label: str, steps: int, flops: dict) -> float:
    """GFLOP per member-step over the whole rollout: the study's count when one invocation ran it
    all, else rebuilt from the stored moves (emulator + levels pass on refined steps + one forward
    per move; a resumed rollout's own count covers only its last part)."""
    if cost["physical_steps_measured"] == steps:
        return cost["flops_per_member_step"] / 1e9
    every = int(re.search(r"every=(\d+)", label).group(1)) if "every=" in label else 1
    return flops["emulator"] + flops["levels"] / every + flops["forward"] * report["moves"]["mean"]


def cpu_rates(metrics: dict, flops: dict) -> dict[bool, float]:
    """CPU seconds per GFLOP on this machine, pooled over the rollouts one invocation ran whole:
    {False: refined methods, True: the emulator}."""
    study, totals = metrics["study"], {False: [0.0, 0.0], True: [0.0, 0.0]}
    for label, entry in metrics["methods"].items():
        cost = entry["summary"].get("cost") or {}
        if label == "solver" or cost.get("physical_steps_measured") != study["horizon"]:
            continue
        stage = metrics["stages"][f"rollout/{label}"]
        stage = stage.get("last_run", stage)  # a later invocation that skipped it keeps its run's
        totals[label == "emulator"][0] += stage["cpu_seconds"]
        totals[label == "emulator"][1] += cost["flops_per_member_step"] / 1e9 * study["horizon"] * \
            study["members"]
    return {key: cpu / gflop for key, (cpu, gflop) in totals.items()}


def frontier(metrics: dict, solver_cpu: float, flops: dict, rate: dict[bool, float] | None = None,
             ) -> list[dict]:
    """One row per method: cost and fidelity as the module docstring defines them (`rate`: CPU
    seconds per GFLOP, by default `cpu_rates` of the study's own rollouts)."""
    study = metrics["study"]
    rate = rate or cpu_rates(metrics, flops)
    floor = metrics["methods"]["solver"]["summary"]["last"]
    rows = []
    for label, entry in metrics["methods"].items():
        if label == "solver":
            continue
        summary, report = entry["summary"], entry["report"]
        horizon = summary["horizon_time"]
        gflop = whole_run_gflop(summary["cost"], report, label, study["horizon"], flops)
        worst, lo, hi, name = worst_metric(summary["last"], floor)
        stability = report["stability"]
        times = [min(t, horizon) if t is not None else horizon for t in stability["times"]]
        median, m_lo, m_hi = median_interval(times)
        published = metrics["methods"].get("left_down")
        versus = paired(stability["times"], published["report"]["stability"]["times"], horizon) \
            if published else None
        steps_per_unit = study["horizon"] / horizon
        cpu = gflop * steps_per_unit * rate[label == "emulator"]
        rows.append({
            "method": label, "vs_published": versus, "cpu_per_member_time_unit": cpu,
            "cost_vs_solver": cpu / solver_cpu, "gflop_per_member_step": gflop,
            "worst_x_floor": worst, "worst_interval": [lo, hi], "worst_metric": name,
            "median_stability": median, "median_interval": [m_lo, m_hi],
            "stable_at_horizon": float(stability["survival_at_horizon"]),
            "energy_ratio": summary["last"]["energy_ratio"]["energy"]})
    return rows


SHORT = {"left_down": "published (left_down)", "left_down[level_floor=10,every=5]": "floor 10, every 5",
         "left_down[long=lagged]": "lagged long frame", "left_down[walk=ddim]": "DDIM walk",
         "left_down[level_floor=5]": "floor 5",
         "left_down[level_floor=3] @refiner-2x": "floor 3, refiner 2×",
         "left_down[long=lagged,level_floor=2] @refiner-2x": "lagged + floor 2, refiner 2×",
         "left_down[long=lagged,level_floor=2] @refiner-4x": "lagged + floor 2, refiner 4×",
         "left_down[long=lagged,level_floor=5] @refiner-4x": "lagged + floor 5, refiner 4×",
         "thermalizer @thermalizer-8k": "Thermalizer (8 000 steps)"}


OFFSETS = [(7, 6), (7, -12), (7, 18), (7, -24), (-7, 6), (-7, -12)]  # points from the marker


def place_labels(fig, labels: list) -> None:
    """Annotate each (axis, text, point, colour) at the first of OFFSETS where it overlaps no label
    placed before it (left of the point: right-aligned), else at the first offset."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for axis, text, point, colour in labels:
        for dx, dy in OFFSETS:
            label = axis.annotate(text, point, textcoords="offset points", xytext=(dx, dy),
                                  fontsize=8, color=colour, ha="left" if dx > 0 else "right")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:
            label = axis.annotate(text, point, textcoords="offset points", xytext=OFFSETS[0],
                                  fontsize=8, color=colour)
            box = label.get_window_extent(renderer)
        placed.append(box)


def plot(rows: list[dict], horizon: float, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True)
    labels = []
    for row in sorted(rows, key=lambda r: r["cost_vs_solver"]):
        x = row["cost_vs_solver"]
        style = dict(marker="s" if row["method"] == "emulator" else "o", ms=7, capsize=3)
        for axis, key, interval in ((top, "worst_x_floor", "worst_interval"),
                                    (bottom, "median_stability", "median_interval")):
            y, (lo, hi) = row[key], row[interval]
            line = axis.errorbar([x], [y], yerr=[[y - lo], [hi - y]], **style)
            labels.append((axis, SHORT.get(row["method"], row["method"]), (x, y), line[0].get_color()))
    top.plot([1], [1], "k*", ms=14)
    top.annotate("solver (the floor)", (1, 1), textcoords="offset points", xytext=(6, -12), fontsize=8)
    top.set_yscale("log")
    top.set_ylabel("worst last-window metric × solver floor\n(log; 1 = the solver)")
    top.axhline(1.5, color="0.5", ls=":", lw=1)
    bottom.plot([1], [horizon], "k*", ms=14)
    bottom.annotate(f"solver (stable past {horizon:g})", (1, horizon), textcoords="offset points",
                    xytext=(6, -12), fontsize=8)
    bottom.set_ylabel("median stability time (time units; members stable\nto the horizon count at it), "
                      "90 % interval")
    bottom.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    bottom.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bottom.xaxis.set_major_formatter(ScalarFormatter())
    bottom.xaxis.set_minor_formatter(NullFormatter())
    low, high = bottom.get_xlim()
    bottom.set_xlim(low, high * 2.5)   # room for the labels right of the points
    top.annotate("criterion 2: ≤ 1.5×", (high * 2.5, 1.5), fontsize=8, color="0.4",
                 textcoords="offset points", xytext=(-4, 3), ha="right")
    bottom.set_xlabel("CPU cost per simulated time unit, relative to the solver (log; same machine)")
    fig.suptitle("Cost against fidelity: every refinement policy of the ablation", y=0.995)
    fig.tight_layout()
    place_labels(fig, labels)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--solver-cpu", type=float, help="CPU s per member-time-unit of the solver")
    args = parser.parse_args()
    metrics = json.loads(args.metrics.read_text())
    solver_cpu = args.solver_cpu if args.solver_cpu is not None else solver_cost()
    rows = frontier(metrics, solver_cpu, pass_gflop(metrics["study"]["bundle"]))
    args.out.mkdir(parents=True, exist_ok=True)
    horizon = metrics["methods"][rows[0]["method"]]["summary"]["horizon_time"]
    plot(rows, horizon, args.out / "frontier.png")
    (args.out / "frontier.json").write_text(json.dumps({"solver_cpu_per_member_time_unit": solver_cpu,
                                                        "rows": rows}, indent=1) + "\n")
    for row in sorted(rows, key=lambda r: r["cost_vs_solver"]):
        print(f"{row['method']:38s} cost {row['cost_vs_solver']:7.2f}× solver  "
              f"worst {row['worst_x_floor']:8.3g}× floor  median stability {row['median_stability']:.2f}  "
              f"stable {row['stable_at_horizon']:.0%}")


if __name__ == "__main__":
    main()
