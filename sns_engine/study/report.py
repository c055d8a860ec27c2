"""A study's plan (written before any rollout) and its report: every method against the solver
floor, the pre-registered criteria and which held, the cost of each stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sns_engine.config import to_dict, write_json
from sns_engine.diffusion.paths import get_path
from sns_engine.study.config import StudyConfig, slug, study_command
from sns_engine.study.pipeline import MATCH_TOLERANCE, SOLVER, THERMALIZER_CANDIDATES

BANDS = ("low", "mid", "high")


# ------------------------------------------------------------------------------ plan
def plan_text(cfg: StudyConfig, plan: dict[str, Any]) -> str:
    """plan.md: the resolved methods and the pass/fail criteria, fixed before the first rollout."""
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
                  f"±{100 * MATCH_TOLERANCE:.0f} %). Trials: "
                  + "; ".join(f"start {t['thermalizer_start']}/stop {t['thermalizer_stop']}: "
                              f"{t['flops_per_member_step'] / 1e9:.3g} GFLOP"
                              for t in pilot["trials"]), ""]
    if plan["pending"]:
        lines += [f"Pending (their model is not trained yet): {', '.join(plan['pending'])}. Once it "
                  "is, each is resolved by its rule: its settings as written, `match=M` choosing "
                  f"the Thermalizer start (of {', '.join(map(str, THERMALIZER_CANDIDATES))}; stop "
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
        "to the solver's is more temporally consistent (the paper's claim: SNS).",
        "", "A member is unstable from its first saved state whose symmetric spectrum error exceeds "
        f"{cfg.stability_threshold:g}, whose kinetic energy leaves [0.1, 10]× the reference's, or "
        "at which it was flagged.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ numbers
def window_values(report: dict[str, Any], w: dict[str, Any]) -> dict[str, float]:
    """The window metrics the criteria compare, flat: spectrum error per curve, band errors
    per curve and band, W1 per channel, kinetic-energy ratio."""
    values = {f"spectrum {c}": v for c, v in w["spectrum_error"].items()}
    for curve, bands in w["band_error"].items():
        values.update({f"{b} {curve}": bands[b] for b in BANDS})
    values.update({f"W1 of channel {i}": v for i, v in enumerate(w["w1"])})
    values.update({f"energy {c}": v for c, v in w["energy_ratio"].items()})
    return values


def summarize(report: dict[str, Any], cost: dict[str, Any] | None) -> dict[str, Any]:
    """The headline numbers of one method (or of the solver control, without a cost)."""
    windows, stability = report["windows"], report["stability"]
    horizon = report["snapshots"] * report["snapshot_dt"]
    last = windows[-1]
    errors = [v for w in windows for v in w["spectrum_error"].values()]
    acf = report.get("autocorrelation") or {}
    return {
        "horizon_time": horizon,
        "median_stability_time": stability["median"],  # None: beyond the horizon
        "survival_at_horizon": stability["survival_at_horizon"],
        "flagged_at_horizon": last["flagged"],
        "mean_spectrum_error": float(np.mean(errors)) if all(map(math.isfinite, errors)) else math.inf,
        "last": last,
        "decorrelation_time": (acf.get("decorrelation_time") or {}).get("ensemble"),
        "solver_decorrelation_time": (acf.get("decorrelation_time") or {}).get("reference"),
        "cost": cost or {},
    }


def floor_ratios(report: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, float]]:
    """Per window: each metric divided by the solver floor's (energy: |E/E_solver − 1|, per
    curve)."""
    out = []
    for w, f in zip(report["windows"], floor["windows"], strict=True):
        mine, theirs = window_values(report, w), window_values(floor, f)
        out.append({k: abs(v / theirs[k] - 1) if k.startswith("energy") else _ratio(v, theirs[k])
                    for k, v in mine.items()})
    return out


def _ratio(a: float, b: float) -> float:
    if not math.isfinite(a):
        return math.inf
    return a / b if b > 0 else math.inf


def judge(cfg: StudyConfig, plan: dict[str, Any],
          reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pre-registered criteria against the reports: one entry per criterion and method."""
    c, floor = plan["criteria"], reports[SOLVER]
    verdicts = []
    for m in (m for m in cfg.methods if m in reports):
        path = plan["methods"][m]["path"]
        r = reports[m]
        if path == "emulator":
            unstable = 1 - r["stability"]["survival_at_horizon"]
            last = np.mean(list(r["windows"][-1]["spectrum_error"].values()))
            base = np.mean(list(floor["windows"][-1]["spectrum_error"].values()))
            factor = _ratio(last, base)
            verdicts.append({
                "criterion": "emulator drifts", "method": m,
                "holds": bool(unstable >= c["drift_unstable_fraction"]
                              and factor >= c["drift_floor_factor"]),
                "numbers": f"{100 * unstable:.0f} % unstable (need ≥ "
                           f"{100 * c['drift_unstable_fraction']:.0f} %); last-window spectrum "
                           f"error {last:.3g} = {factor:.3g}× floor {base:.3g} (need ≥ "
                           f"{c['drift_floor_factor']:g}×)"})
        elif get_path(path).model == "refiner":
            ratios = floor_ratios(r, floor)
            worst_key, worst, worst_window = None, -1.0, 0
            for i, window in enumerate(ratios):
                for k, v in window.items():
                    if not k.startswith("energy") and v > worst:
                        worst_key, worst, worst_window = k, v, i
            energy = max(v for w in ratios for k, v in w.items() if k.startswith("energy"))
            survival = r["stability"]["survival_at_horizon"]
            verdicts.append({
                "criterion": "SNS stays on the attractor", "method": m,
                "holds": bool(survival == 1 and worst <= c["attractor_floor_factor"]
                              and energy <= c["energy_tolerance"]),
                "numbers": f"survival {100 * survival:.0f} % (need 100 %); worst metric/floor "
                           f"{worst:.3g} ({worst_key}, window {worst_window + 1}; need ≤ "
                           f"{c['attractor_floor_factor']:g}); worst |E/E_solver − 1| "
                           f"{energy:.3g} (need ≤ {c['energy_tolerance']:g})"})
    for m, pilot in plan.get("pilots", {}).items():
        target = pilot["match"]
        if m not in reports or target not in reports:
            continue
        taus = {who: (reports[who].get("autocorrelation") or {}).get("decorrelation_time", {})
                for who in (m, target)}
        solver = taus[target].get("reference")
        gaps = {who: abs(t["ensemble"] / solver - 1) if t.get("ensemble") and solver else None
                for who, t in taus.items()}
        known = {who: g for who, g in gaps.items() if g is not None}
        closer = min(known, key=known.get) if len(known) == 2 else None
        verdicts.append({
            "criterion": "SNS vs Thermalizer at matched forwards", "method": f"{target} vs {m}",
            "holds": closer == target if closer else None,
            "numbers": f"decorrelation time: solver {_fmt(solver)}, {target} "
                       f"{_fmt(taus[target].get('ensemble'))}, {m} {_fmt(taus[m].get('ensemble'))}"
                       f" → closer to the solver: {closer or 'undecided (a time beyond the lags)'}"
                       f"; cost ratio {pilot['ratio']:.2f}"})
    return verdicts


def sign_tests(plan: dict[str, Any], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each refining method against the best baseline (the non-SNS method with the lowest mean
    per-member last-window spectrum error), paired by member: a two-sided sign test."""
    from sns_engine.diagnostics.statistics import sign_test

    def errors(label: str) -> list[float]:  # per member, averaged over the spectra
        per_curve = reports[label]["per_member"]["last_window_spectrum_error"].values()
        return np.mean(list(per_curve), axis=0).tolist()

    done = {m: s for m, s in plan["methods"].items() if m in reports}
    baselines = [m for m, s in done.items() if get_path(s["path"]).model != "refiner"]
    if not baselines:
        return {}
    best = min(baselines, key=lambda m: float(np.mean(errors(m))))
    tests = {m: sign_test(errors(m), errors(best)) for m, s in done.items()
             if get_path(s["path"]).model == "refiner"}
    return {"baseline": best, "tests": tests}


# ------------------------------------------------------------------------------ report
def write_report(cfg: StudyConfig, out: Path, plan: dict[str, Any],
                 reports: dict[str, dict[str, Any]], costs: dict[str, dict[str, Any]],
                 stages: dict[str, Any]) -> Path:
    """metrics.json, the figures and report.md of a finished study."""
    from sns_engine import plots
    from sns_engine.data import TrajectoryStore

    spec = TrajectoryStore(out / "data" / "reference.zarr").spec
    channels = list(spec.channel_names)
    labels = [SOLVER, *(m for m in cfg.methods if m in reports)]
    missing = [m for m in cfg.methods if m not in reports]
    summaries = {m: summarize(reports[m], costs.get(m)) for m in labels}
    verdicts = judge(cfg, plan, reports)
    tests = sign_tests(plan, reports)
    command = study_command(cfg, out)
    write_json(out / "metrics.json", {
        "study": to_dict(cfg), "command": command, "plan": plan, "criteria": verdicts,
        "sign_tests": tests, "stages": stages,
        "methods": {m: {"summary": summaries[m], "report": reports[m]} for m in labels}})
    stores = {SOLVER: (out / "data" / "control.zarr", 1),
              **{m: (out / "rollouts" / f"{slug(m)}.zarr", 0) for m in labels[1:]}}
    figures = plots.study_figures({m: reports[m] for m in labels}, out / "figures", stores)
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
        f"models from {cfg.bundle or 'bundle/ (trained here)'}. Horizon {cfg.horizon} model steps "
        f"({summaries[SOLVER]['horizon_time']:.3g} time units), {cfg.windows} windows.", "",
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
        "over the shells the solver resolves.", "",
        *_summary_table(labels, summaries, reports, floor, channels), "",
        _sign_text(tests), "",
        "## Reference stationarity", "", _stationarity_text(floor), "",
        "## Per window", ""]
    for m in labels:
        lines += _window_section(m, reports[m], floor, channels)
    ran = {s: v["last_run"] for s, v in stages.items() if "last_run" in v}
    lines += ["## Cost of each stage (this machine)", "",
              "The last run of each stage (a stage resumed after a kill counts only its last part; "
              "CPU seconds are this process's, all threads).", "",
              *_table(["stage", "finished", "wall seconds", "CPU seconds"],
                      [[s, v["finished"], f"{v['seconds']:.0f}", f"{v['cpu_seconds']:.0f}"]
                       for s, v in sorted(ran.items())]), "",
              "## Figures", "", *(f"![{p.stem}](figures/{p.name})" for p in figures), "",
              "Per-method figures: " + ", ".join(f"[{m}](figures/{slug(m)}/)" for m in labels), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _summary_table(labels: list[str], summaries: dict[str, Any], reports: dict[str, Any],
                   floor: dict[str, Any], channels: list[str]) -> list[str]:
    f_last = floor["windows"][-1]
    curves = list(f_last["spectrum_error"])
    header = ["method", "survival", "median stability time",
              *(f"spectrum error {c} (×floor)" for c in curves),
              *(f"{b}-k ×floor" for b in BANDS), *(f"W1 {c} (×floor)" for c in channels),
              "KE / reference", "decorrelation time (solver)", "member-forwards / member-step",
              "GFLOP / member-step", "seconds / step"]
    rows = []
    for m in labels:
        s, r = summaries[m], reports[m]
        w, interval = r["windows"][-1], r["windows"][-1]["interval"]
        cost = s["cost"]
        rows.append([
            m, f"{100 * s['survival_at_horizon']:.0f} %",
            f"> {s['horizon_time']:.3g}" if s["median_stability_time"] is None
            else f"{s['median_stability_time']:.3g}",
            *(f"{_ci(w['spectrum_error'][c], interval['spectrum_error'][c])} "
              f"({_ratio(w['spectrum_error'][c], f_last['spectrum_error'][c]):.2g})" for c in curves),
            *(_fmt(max(_ratio(w["band_error"][c][b], f_last["band_error"][c][b]) for c in curves))
              for b in BANDS),
            *(f"{_ci(w['w1'][i], interval['w1'][i])} ({_ratio(w['w1'][i], f_last['w1'][i]):.2g})"
              for i in range(len(channels))),
            ", ".join(_ci(v, interval["energy_ratio"][c]) for c, v in w["energy_ratio"].items()),
            f"{_fmt(s['decorrelation_time'])} ({_fmt(s['solver_decorrelation_time'])})",
            _fmt(cost.get("member_forwards_per_member_step")),
            _fmt(cost["flops_per_member_step"] / 1e9) if cost.get("flops_per_member_step") else "–",
            _fmt(cost.get("seconds_per_step"))])
    return _table(header, rows)


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
