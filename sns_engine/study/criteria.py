"""The pre-registered criteria applied to a study's evaluation reports, and the paired tests.

1. the emulator drifts: enough of its members unstable by the horizon, its last-window spectrum
   error a multiple of the solver floor's;
2. SNS stays on the attractor: every member survives, every band error and W1 within a factor of
   the floor's, the kinetic energy within a tolerance of the solver's;
3. SNS against the Thermalizer at matched forwards: whose decorrelation time is closer to the
   *solver control's*. A time beyond the lag window is a lower bound (`outcomes.decorrelation`),
   so the comparison runs on intervals and decides only where the bounds decide.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sns_engine.diffusion.paths import get_path
from sns_engine.study.config import SOLVER, StudyConfig
from sns_engine.study.outcomes import Bound, decorrelation

BANDS = ("low", "mid", "high")


def window_values(w: dict[str, Any]) -> dict[str, float]:
    """The window metrics the criteria compare, flat: spectrum error per curve, band errors
    per curve and band, W1 per channel, kinetic-energy ratio."""
    values = {f"spectrum {c}": v for c, v in w["spectrum_error"].items()}
    for curve, bands in w["band_error"].items():
        values.update({f"{b} {curve}": bands[b] for b in BANDS})
    values.update({f"W1 of channel {i}": v for i, v in enumerate(w["w1"])})
    values.update({f"energy {c}": v for c, v in w["energy_ratio"].items()})
    return values


def floor_ratios(report: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, float]]:
    """Per window: each metric divided by the solver floor's (energy: |E/E_solver − 1|, per
    curve)."""
    out = []
    for w, f in zip(report["windows"], floor["windows"], strict=True):
        mine, theirs = window_values(w), window_values(f)
        out.append({k: abs(v / theirs[k] - 1) if k.startswith("energy") else ratio(v, theirs[k])
                    for k, v in mine.items()})
    return out


def ratio(a: float, b: float) -> float:
    """a / b, inf where a is not finite or b is not positive."""
    if not math.isfinite(a):
        return math.inf
    return a / b if b > 0 else math.inf


def judge(cfg: StudyConfig, plan: dict[str, Any],
          reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pre-registered criteria against the reports: one entry per criterion and method, each
    with `holds` (True, False, or None: undecided) and the numbers it was decided on."""
    c, floor = plan["criteria"], reports[SOLVER]
    verdicts = []
    for m in (m for m in cfg.methods if m in reports):
        path = plan["methods"][m]["path"]
        if path == "emulator":
            verdicts.append(_drifts(m, reports[m], floor, c))
        elif get_path(path).model == "refiner":
            verdicts.append(_on_attractor(m, reports[m], floor, c))
    for m, pilot in plan.get("pilots", {}).items():
        if m in reports and pilot["match"] in reports:
            verdicts.append(_closer_decorrelation(pilot["match"], m, reports, pilot["ratio"]))
    return verdicts


def _drifts(m: str, r: dict[str, Any], floor: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    unstable = 1 - r["stability"]["survival_at_horizon"]
    last = np.mean(list(r["windows"][-1]["spectrum_error"].values()))
    base = np.mean(list(floor["windows"][-1]["spectrum_error"].values()))
    factor = ratio(last, base)
    return {"criterion": "emulator drifts", "method": m,
            "holds": bool(unstable >= c["drift_unstable_fraction"]
                          and factor >= c["drift_floor_factor"]),
            "numbers": f"{100 * unstable:.0f} % unstable (need ≥ "
                       f"{100 * c['drift_unstable_fraction']:.0f} %); last-window spectrum "
                       f"error {last:.3g} = {factor:.3g}× floor {base:.3g} (need ≥ "
                       f"{c['drift_floor_factor']:g}×)"}


def _on_attractor(m: str, r: dict[str, Any], floor: dict[str, Any],
                  c: dict[str, Any]) -> dict[str, Any]:
    ratios = floor_ratios(r, floor)
    worst_key, worst, worst_window = None, -1.0, 0
    for i, window in enumerate(ratios):
        for k, v in window.items():
            if not k.startswith("energy") and v > worst:
                worst_key, worst, worst_window = k, v, i
    energy = max(v for w in ratios for k, v in w.items() if k.startswith("energy"))
    survival = r["stability"]["survival_at_horizon"]
    return {"criterion": "SNS stays on the attractor", "method": m,
            "holds": bool(survival == 1 and worst <= c["attractor_floor_factor"]
                          and energy <= c["energy_tolerance"]),
            "numbers": f"survival {100 * survival:.0f} % (need 100 %); worst metric/floor "
                       f"{worst:.3g} ({worst_key}, window {worst_window + 1}; need ≤ "
                       f"{c['attractor_floor_factor']:g}); worst |E/E_solver − 1| "
                       f"{energy:.3g} (need ≤ {c['energy_tolerance']:g})"}


def _closer_decorrelation(sns: str, thermalizer: str, reports: dict[str, dict[str, Any]],
                          cost_ratio: float) -> dict[str, Any]:
    """Criterion 3: which of `sns` and `thermalizer` has the decorrelation time closer to the
    solver control's; decided only where the intervals of |τ − τ_solver| do not overlap."""
    taus = {who: decorrelation(reports[who]) for who in (SOLVER, sns, thermalizer)}
    reference = (reports[SOLVER].get("autocorrelation") or {}).get("decorrelation_time", {})
    times = (f"decorrelation time: solver control {_bound(taus[SOLVER])}, {sns} "
             f"{_bound(taus[sns])}, {thermalizer} {_bound(taus[thermalizer])} (reference "
             f"{_num(reference.get('reference'))})")
    unknown = [who for who, tau in taus.items() if tau is None]
    holds, reason = None, ""
    if unknown:
        reason = (f"undecided because {', '.join(unknown)} has no decorrelation time (no "
                  "autocorrelation, or a NaN one)")
    else:
        gap = {who: taus[who].distance(taus[SOLVER]) for who in (sns, thermalizer)}
        times += (f"; |{sns} − solver| {_gap(gap[sns])}, |{thermalizer} − solver| "
                  f"{_gap(gap[thermalizer])}")
        if gap[sns].high < gap[thermalizer].low:
            holds, reason = True, f"{sns} is closer to the solver"
        elif gap[thermalizer].high < gap[sns].low:
            holds, reason = False, f"{thermalizer} is closer to the solver"
        elif gap[sns].exact and gap[thermalizer].exact:
            reason = "undecided because both are equally close"
        else:
            bounded = [who for who in (SOLVER, sns, thermalizer) if not taus[who].exact]
            which = (f"the time of {bounded[0]} lies" if len(bounded) == 1
                     else f"the times of {', '.join(bounded)} lie")
            reason = (f"undecided because {which} beyond the {_num(_window(reports))}-time-unit "
                      "lag window, and the bounds do not decide which is closer")
    return {"criterion": "SNS vs Thermalizer at matched forwards",
            "method": f"{sns} vs {thermalizer}", "holds": holds,
            "numbers": f"{times} → {reason}; cost ratio {cost_ratio:.2f}"}


def _window(reports: dict[str, dict[str, Any]]) -> float | None:
    lags = [r["autocorrelation"]["lag_time"][-1] for r in reports.values()
            if r.get("autocorrelation")]
    return min(lags) if lags else None


def _bound(tau: Bound | None) -> str:
    if tau is None:
        return "–"
    return tau.text() + (" (beyond the lag window)" if math.isinf(tau.high) else "")


def _gap(gap: Bound) -> str:
    if gap.exact:
        return f"= {gap.low:.3g}"
    return f"≥ {gap.low:.3g}" if math.isinf(gap.high) else f"∈ [{gap.low:.3g}, {gap.high:.3g}]"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


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
