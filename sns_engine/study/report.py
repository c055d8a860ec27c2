"""A study's plan (written before any rollout) and its report: every method against the solver
floor, the pre-registered criteria and which held, what became of the members, and what each
rollout and stage cost."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sns_engine.config import to_dict, write_json
from sns_engine.diffusion.paths import get_path
from sns_engine.study import costs, outcomes
from sns_engine.study.checksums import RECORD
from sns_engine.study.config import SOLVER, StudyConfig, slug, study_command
from sns_engine.study.criteria import BANDS, judge, ratio, sign_tests


# ------------------------------------------------------------------------------ plan
def plan_text(cfg: StudyConfig, plan: dict[str, Any], out: Path | None = None) -> str:
    """plan.md: the resolved methods and the pass/fail criteria, fixed before the first rollout,
    and the SHA-256 of every bundle file used (from `out`/bundle.sha256.json where present)."""
    c = plan["criteria"]
    refiners = [m for m, s in plan["methods"].items() if get_path(s["path"]).model == "refiner"]
    lines = [f"# Plan of the study (written {plan['written']}, before the first rollout)", "",
             "## Methods, every setting resolved", "",
             *_table(["method", "rollout settings"],
                     [[m, ", ".join(f"{k}={v}" for k, v in s.items())]
                      for m, s in plan["methods"].items()]), ""]
    if plan.get("calibration"):
        cal = plan["calibration"]
        lines += [f"Calibrated threshold: the {cal['quantile']:g} quantile of n̂_x on {cal['samples']} "
                  f"held-out clean frames of {cal['data']} is {cal['value']:g}, so threshold = "
                  f"{cal['threshold']} (n̂_x median {cal['n_x']['median']:g}, 10–90 % "
                  f"{cal['n_x']['p10']:g}–{cal['n_x']['p90']:g}).", ""]
    for label, pilot in plan.get("pilots", {}).items():
        goal = pilot["target_cost"]["flops_per_member_step"]
        lines += [f"{label}: start tuned on {cfg.pilot_steps}-step pilots to the FLOPs per "
                  f"member-step of {pilot['match']} ({goal / 1e9:.3g} GFLOP): chosen "
                  f"{pilot['chosen']}, ratio {pilot['ratio']:.3f} "
                  f"({'within' if pilot['within_tolerance'] else 'NOT within'} "
                  f"±{100 * costs.MATCH_TOLERANCE:.0f} %). Trials: "
                  + "; ".join(f"start {t['thermalizer_start']}/stop {t['thermalizer_stop']}: "
                              f"{t['flops_per_member_step'] / 1e9:.3g} GFLOP"
                              for t in pilot["trials"]), ""]
    if plan["pending"]:
        lines += [f"Pending (their model is not trained yet): {', '.join(plan['pending'])}. Once it "
                  "is, each is resolved by its rule: its settings as written, `match=M` choosing "
                  f"the Thermalizer start (of {', '.join(map(str, costs.THERMALIZER_CANDIDATES))}; stop "
                  f"below it) whose FLOPs per member-step on {cfg.pilot_steps}-step pilots are "
                  "closest to M's.", ""]
    for label, when in plan.get("resolved_later", {}).items():
        lines += [f"{label} was resolved at {when}, after the criteria were written, from pilot "
                  "costs only.", ""]
    lines += [
        "## Pass/fail criteria", "",
        f"The solver floor is the solver control ensemble ({cfg.members} members from the methods' "
        "initial states, evaluated exactly like them) against the same reference.", "",
        f"1. **The emulator drifts**: ≥ {100 * c['drift_unstable_fraction']:.0f} % of its members "
        f"unstable by the horizon, and its last-window spectrum error ≥ "
        f"{c['drift_floor_factor']:g}× the solver floor's.",
        f"2. **SNS stays on the attractor** (each of {', '.join(refiners) or 'none'}): every member "
        f"survives to the horizon; in every window every band error and every channel's W1 is ≤ "
        f"{c['attractor_floor_factor']:g}× the solver floor's, and the kinetic energy is within "
        f"{100 * c['energy_tolerance']:.0f} % of the solver's.",
        "3. **SNS vs Thermalizer at matched forwards**: whichever has the decorrelation time closer "
        "to the solver control's is more temporally consistent (the paper's claim: SNS). A time "
        "beyond the lag window is a lower bound; the comparison is decided only where the bounds "
        "decide it.",
        "", "A member is unstable from its first saved state whose symmetric spectrum error exceeds "
        f"{cfg.stability_threshold:g}, whose kinetic energy leaves [0.1, 10]× the reference's, or "
        "at which it was flagged. A flagged (frozen) member is reported apart: its stability time "
        "is censored at its flag, not counted as an instability.", ""]
    record = out / RECORD if out is not None else None
    if record is not None and record.exists():
        files = json.loads(record.read_text())["files"]
        lines += ["## Bundle files (SHA-256)", "",
                  *_table(["file", "SHA-256"], [[f, f"`{h}`"] for f, h in sorted(files.items())]), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ numbers
def summarize(report: dict[str, Any], cost: dict[str, Any] | None, steps: int, members: int,
              last_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of one method (or of the solver control, without a cost): fates of
    its members, survival with frozen members censored, last window, decorrelation time (a bound
    where it lies beyond the lag window) and the whole rollout's cost."""
    windows = report["windows"]
    errors = [v for w in windows for v in w["spectrum_error"].values()]
    acf = report.get("autocorrelation") or {}
    tau = outcomes.decorrelation(report)
    survival = outcomes.survival(report)
    return {
        "horizon_time": report["snapshots"] * report["snapshot_dt"],
        "fates": survival["fates"],
        "median_stability_time": survival["median"],  # frozen members censored; None: not reached
        "survival": survival,
        "survival_at_horizon": report["stability"]["survival_at_horizon"],
        "flagged_at_horizon": windows[-1]["flagged"],
        "mean_spectrum_error": float(np.mean(errors)) if all(map(math.isfinite, errors)) else math.inf,
        "last": windows[-1],
        "decorrelation_time": None if tau is None else [tau.low, tau.high],
        "reference_decorrelation_time": (acf.get("decorrelation_time") or {}).get("reference"),
        "cost": cost or {},
        "whole_cost": costs.whole_rollout(cost, report, steps, members, last_run) if cost else {},
    }


# ------------------------------------------------------------------------------ report
def write_report(cfg: StudyConfig, out: Path, plan: dict[str, Any],
                 reports: dict[str, dict[str, Any]], spent: dict[str, dict[str, Any]],
                 stages: dict[str, Any]) -> Path:
    """metrics.json, the figures and report.md of a finished study (`spent`: the cost JSON of
    every method rolled out, `stages`: stages.json)."""
    from sns_engine import plots
    from sns_engine.data import TrajectoryStore

    spec = TrajectoryStore(out / "data" / "reference.zarr").spec
    channels = list(spec.channel_names)
    labels = [SOLVER, *(m for m in cfg.methods if m in reports)]
    missing = [m for m in cfg.methods if m not in reports]
    summaries = {m: summarize(reports[m], spent.get(m), cfg.horizon, cfg.members,
                              stages.get(f"rollout/{m}", {}).get("last_run")) for m in labels}
    verdicts = judge(cfg, plan, reports)
    tests = sign_tests(plan, reports)
    command = study_command(cfg, out)
    write_json(out / "metrics.json", {
        "study": to_dict(cfg), "command": command, "plan": plan, "criteria": verdicts,
        "sign_tests": tests, "stages": stages,
        "methods": {m: {"summary": summaries[m], "report": reports[m]} for m in labels}})
    stores = {SOLVER: (out / "data" / "control.zarr", 1),
              **{m: (out / "rollouts" / f"{slug(m)}.zarr", 0) for m in labels[1:]}}
    figures = plots.study_figures({m: reports[m] for m in labels}, out / "figures", stores,
                                  {m: summaries[m]["survival"] for m in labels})
    for m in labels:
        plots.report_figures(reports[m], out / "figures" / slug(m))

    floor = reports[SOLVER]
    lines = [
        f"# Study: {cfg.system} ({cfg.preset} preset)", "",
        "Command (reproduces this study, every setting explicit):", "", f"    {command}", "",
        f"Reference: {cfg.reference_trajectories} solver trajectories × {cfg.reference_snapshots} "
        f"states (seed {cfg.seed + 1}); solver control: {cfg.members} trajectories (seed "
        f"{cfg.seed + 2}) whose first states every method starts from; grid {spec.grid}², "
        f"channels {', '.join(channels)}, one saved state every {spec.snapshot_dt:.4g} time units; "
        f"models from {cfg.bundle or 'bundle/ (trained here)'}{_checksum_text(out)}. Horizon "
        f"{cfg.horizon} model steps ({summaries[SOLVER]['horizon_time']:.3g} time units), "
        f"{cfg.windows} windows.", "",
        *([f"**Incomplete**: {', '.join(missing)} not rolled out yet (pending: "
            f"{', '.join(plan['pending']) or 'none'}, waiting for a model); rerun the study's "
            "command to complete it.", ""] if missing else []),
        "## Pre-registered criteria and what held", "",
        f"Written into [plan.md](plan.md) at {plan['written']}, before the first rollout.", "",
        *_table(["criterion", "method", "held", "numbers"],
                [[v["criterion"], v["method"],
                  {True: "**yes**", False: "**no**", None: "undecided"}[v["holds"]], v["numbers"]]
                 for v in verdicts]), "",
        "## Every method against the solver floor (last window)", "",
        "Values with their 90 % bootstrap interval over members; ×floor divides by the solver "
        "control's value in the same window. Spectrum errors are the symmetric mean |log E/E_ref| "
        "over the shells the solver resolves. Members: stable to the horizon / unstable (left "
        "the attractor) / flagged (frozen by the engine before they were seen unstable). The "
        "median stability time censors flagged members at their flag (Kaplan–Meier); \"not "
        "reached\" where fewer than half are seen unstable. Decorrelation time: where the "
        "ensemble's autocorrelation falls to 1/e; \"> L\" where it stays above 1/e over the whole "
        "lag window L. Costs cover the whole rollout (next section).", "",
        *_summary_table(labels, summaries, reports, floor, channels), "",
        _sign_text(tests), "",
        "## Cost of each rollout, whole", "", *_cost_section(labels[1:], summaries), "",
        "## Reference stationarity", "", _stationarity_text(floor), "",
        "## Per window", ""]
    for m in labels:
        lines += _window_section(m, reports[m], floor, channels)
    ran = {s: v["last_run"] for s, v in stages.items() if "last_run" in v}
    lines += ["## Cost of each stage (this machine)", "",
              "The last run of each stage (a stage resumed after a kill counts only its last part "
              "here; a rollout's every part is in the section above; CPU seconds are this "
              "process's, all threads).", "",
              *_table(["stage", "finished", "wall seconds", "CPU seconds"],
                      [[s, v["finished"], f"{v['seconds']:.0f}", f"{v['cpu_seconds']:.0f}"]
                       for s, v in sorted(ran.items())]), "",
              "## Figures", "", *(f"![{p.stem}](figures/{p.name})" for p in figures), "",
              "Per-method figures: " + ", ".join(f"[{m}](figures/{slug(m)}/)" for m in labels), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _checksum_text(out: Path) -> str:
    file = out / RECORD
    if not file.exists():
        return " (no bundle checksums recorded)"
    record = json.loads(file.read_text())
    when = "before the first rollout" if record["before_first_rollout"] else "after rollouts had begun"
    later = f"; {len(record['changes'])} allowed changes since" if record["changes"] else ""
    return f" (SHA-256 of its files in [{RECORD}]({RECORD}), recorded {record['recorded']}, {when}{later})"


def _summary_table(labels: list[str], summaries: dict[str, Any], reports: dict[str, Any],
                   floor: dict[str, Any], channels: list[str]) -> list[str]:
    f_last = floor["windows"][-1]
    curves = list(f_last["spectrum_error"])
    header = ["method", "stable / unstable / flagged", "median stability time",
              *(f"spectrum error {c} (×floor)" for c in curves),
              *(f"{b}-k ×floor" for b in BANDS), *(f"W1 {c} (×floor)" for c in channels),
              "KE / reference",
              f"decorrelation time (reference {_fmt(summaries[SOLVER]['reference_decorrelation_time'])})",
              "member-forwards / member-step", "GFLOP / member-step", "seconds / step"]
    rows = []
    for m in labels:
        s, r = summaries[m], reports[m]
        w, interval = r["windows"][-1], r["windows"][-1]["interval"]
        cost, fates = s["whole_cost"], s["fates"]
        tau = s["decorrelation_time"]
        rows.append([
            m, " / ".join(str(fates[f]) for f in outcomes.FATES), _median(s),
            *(f"{_ci(w['spectrum_error'][c], interval['spectrum_error'][c])} "
              f"({ratio(w['spectrum_error'][c], f_last['spectrum_error'][c]):.2g})" for c in curves),
            *(_fmt(max(ratio(w["band_error"][c][b], f_last["band_error"][c][b]) for c in curves))
              for b in BANDS),
            *(f"{_ci(w['w1'][i], interval['w1'][i])} ({ratio(w['w1'][i], f_last['w1'][i]):.2g})"
              for i in range(len(channels))),
            ", ".join(_ci(v, interval["energy_ratio"][c]) for c, v in w["energy_ratio"].items()),
            "–" if tau is None else outcomes.Bound(*tau).text(),
            _fmt(cost.get("member_forwards_per_member_step")),
            _fmt(cost["flops_per_member_step"] / 1e9) if cost.get("flops_per_member_step") else "–",
            _fmt(cost.get("seconds_per_step"))])
    return _table(header, rows)


def _median(summary: dict[str, Any]) -> str:
    if summary["median_stability_time"] is not None:
        return f"{summary['median_stability_time']:.3g}"
    flagged = summary["fates"]["flagged"]
    if flagged:
        return f"not reached ({flagged} frozen, censored)"
    return f"> {summary['horizon_time']:.3g}"


def _cost_section(labels: list[str], summaries: dict[str, Any]) -> list[str]:
    """Per rollout: its work per member-step from every step its store records, and the wall and
    CPU time of every invocation that worked on it."""
    rows = []
    for m in labels:
        c = summaries[m]["whole_cost"]
        hours = [_fmt(c[k] / 3600) if c.get(k) is not None else "–"
                 for k in ("wall_seconds", "cpu_seconds")]
        timed = c["timed_steps"]
        if c["invocations"] is None:
            covered = f"last invocation only: {_fmt(timed)} of {c['steps']} steps"
        else:
            killed = f", {c['killed_invocations']} killed" if c["killed_invocations"] else ""
            plural = "s" if c["invocations"] > 1 else ""
            covered = (f"{c['invocations']} invocation{plural}{killed}; " + (
                f"steps {c['steps'] - timed}–{c['steps']}" if timed is not None
                else "from a step the first could not read"))
        rows.append([m, _fmt(c["refinement_forwards_per_member_step"]),
                     _fmt(c["level_passes_per_member_step"]),
                     _fmt(c["flops_per_member_step"] / 1e9) if c["flops_per_member_step"] else "–",
                     *hours, _fmt(c["seconds_per_step"]), covered])
    return [
        "Work per member-step from every step the store records (refinement forwards and "
        "levels-only passes; add one emulator forward), FLOPs from each network's FLOPs per pass; "
        "wall and CPU hours summed over every invocation that rolled the method out (CPU: this "
        "process, all threads; an invocation killed without a word counts up to its last "
        f"heartbeat, ≤ {costs.HEARTBEAT:.0f} s short). Rollouts begun before invocations were "
        "recorded are timed on their last invocation only, as said.", "",
        *_table(["method", "refinement forwards / member-step", "levels passes / member-step",
                 "GFLOP / member-step", "wall hours", "CPU hours", "wall seconds / step",
                 "timed"], rows)]


def _window_section(label: str, report: dict[str, Any], floor: dict[str, Any],
                    channels: list[str]) -> list[str]:
    curves = list(report["windows"][0]["spectrum_error"])
    rows = []
    for w in report["windows"]:
        rows.append([f"{w['time'][0]:.3g}–{w['time'][1]:.3g}",
                     *(_ci(w["spectrum_error"][c], w["interval"]["spectrum_error"][c]) for c in curves),
                     *(" / ".join(_fmt(w["band_error"][c][b]) for b in BANDS) for c in curves),
                     *(_ci(w["w1"][i], w["interval"]["w1"][i]) for i in range(len(channels))),
                     *(_ci(w["energy_ratio"][c], w["interval"]["energy_ratio"][c]) for c in curves),
                     f"{100 * w['flagged']:.0f} %"])
    moves = report.get("moves", {}).get("mean")
    return [f"### {label}", "",
            *_table(["time", *(f"spectrum error {c}" for c in curves),
                     *(f"low / mid / high {c}" for c in curves), *(f"W1 {c}" for c in channels),
                     *(f"KE / reference {c}" for c in curves), "flagged"], rows), "",
            f"Unstable members by rule: {_rules(report)}. Mean refinement forwards per "
            f"member-step: {_fmt(moves)}.", ""]


def _rules(report: dict[str, Any]) -> str:
    rules = [r for r in report["stability"].get("rule", []) if r]
    if not rules:
        return "none"
    return ", ".join(f"{rule} {rules.count(rule)}" for rule in sorted(set(rules)))


def _sign_text(tests: dict[str, Any]) -> str:
    if not tests:
        return ""
    parts = [f"{m}: {t['wins']} members better, {t['losses']} worse, {t['ties']} tied, p = "
             f"{t['p_value']:.3g}" for m, t in tests["tests"].items()]
    return (f"Paired sign test of each SNS method's per-member last-window spectrum error against "
            f"the best baseline ({tests['baseline']}): " + "; ".join(parts) + ".")


def _stationarity_text(floor: dict[str, Any]) -> str:
    trends = floor.get("reference_energy", {}).get("trend") or {}
    parts = [f"{curve}: slope {t['slope']:.3g} ± {t['stderr']:.3g} per time unit (t = {t['t']:.2g}, "
             f"residual correlation time {t['correlation_time']:.3g}), change over the series "
             f"{100 * t['relative_change']:+.1f} %" for curve, t in trends.items() if t]
    if not parts:
        return "The evaluation recorded no kinetic-energy series of the reference."
    return ("Kinetic energy of the reference (mean over its trajectories) against time: "
            + "; ".join(parts) + ". A trend shows as |t| ≫ 2 together with a relative change "
            "beyond the members' spread; read both.")


def _ci(value: float, interval: list[float]) -> str:
    return f"{_fmt(value)} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]
