"""The pre-registered criteria: drift, attractor, and the decorrelation comparison against the
solver control with times beyond the lag window as bounds."""

import pytest

from sns_engine.study import SOLVER, StudyConfig
from sns_engine.study.criteria import judge

PLAN = {"criteria": {"drift_unstable_fraction": 0.75, "drift_floor_factor": 3.0,
                     "attractor_floor_factor": 1.5, "energy_tolerance": 0.1},
        "methods": {"emulator": {"path": "emulator"}, "left_down": {"path": "left_down"},
                    "thermalizer[match=left_down]": {"path": "thermalizer"}},
        "pilots": {"thermalizer[match=left_down]": {"match": "left_down", "ratio": 1.02}}}
CFG = StudyConfig(system="kolmogorov", bundle="b",
                  methods=("emulator", "left_down", "thermalizer[match=left_down]"))


def _report(survival, errors, w1=(0.1,), energy=1.0, tau=None, beyond=None, bands=None):
    """A minimal evaluation report: one curve, one window per error; the autocorrelation falls
    to 1/e at `tau`, or stays above it over a lag window of `beyond` time units."""
    windows = [{"spectrum_error": {"energy": e}, "w1": list(w1), "energy_ratio": {"energy": energy},
                "band_error": {"energy": bands or {"low": e, "mid": e, "high": e}}}
               for e in errors]
    acf = None
    if tau is not None or beyond is not None:
        lags = [i * (beyond or 1.0) / 4 for i in range(5)]
        acf = {"lag_time": lags, "ensemble": [1.0, 0.9, 0.8, 0.7, 0.6] if beyond else [1.0] * 5,
               "decorrelation_time": {"ensemble": tau, "reference": 0.787}}
    return {"windows": windows, "stability": {"survival_at_horizon": survival},
            "autocorrelation": acf}


def verdicts(emulator, sns, thermalizer, solver_tau=1.0):
    reports = {SOLVER: _report(1.0, [0.2, 0.2], tau=solver_tau), "emulator": emulator,
               "left_down": sns, "thermalizer[match=left_down]": thermalizer}
    return judge(CFG, PLAN, reports)


DRIFTS = _report(0.25, [0.3, 0.61])


def test_drift_and_attractor_criteria():
    good_sns, therm = _report(1.0, [0.25, 0.29], tau=1.1), _report(1.0, [0.2, 0.2], tau=1.5)
    assert [v["holds"] for v in verdicts(DRIFTS, good_sns, therm)] == [True, True, True]
    # the emulator: 75 % unstable is enough, 3× the floor is needed
    assert verdicts(_report(0.25, [0.3, 0.59]), good_sns, therm)[0]["holds"] is False
    assert verdicts(_report(0.3, [0.3, 0.6]), good_sns, therm)[0]["holds"] is False
    # SNS: one lost member, one band over 1.5× the floor, 11 % too much energy: each fails it
    for bad in (_report(15 / 16, [0.25, 0.29]),
                _report(1.0, [0.25, 0.25], bands={"low": 0.2, "mid": 0.31, "high": 0.2}),
                _report(1.0, [0.25, 0.25], w1=(0.151,)), _report(1.0, [0.25, 0.25], energy=1.11)):
        assert verdicts(DRIFTS, bad, therm)[1]["holds"] is False


def test_decorrelation_is_compared_with_the_solver_control_not_the_reference():
    # solver control 1.0, reference 0.787: SNS at 0.8 is closer to the reference but not to the
    # control than the Thermalizer at 1.15
    v = verdicts(DRIFTS, _report(1.0, [0.2, 0.2], tau=0.8), _report(1.0, [0.2, 0.2], tau=1.15))[2]
    assert v["holds"] is False
    assert "solver control 1, left_down 0.8, thermalizer[match=left_down] 1.15" in v["numbers"]
    assert "thermalizer[match=left_down] is closer to the solver" in v["numbers"]


@pytest.mark.parametrize("sns, beyond, solver, holds, words", [
    # the brief's case: Thermalizer > 1.0, solver 0.883, SNS 0.598: |T − s| ≥ 0.117 against 0.285
    (0.598, 1.0, 0.883, None, "|thermalizer[match=left_down] − solver| ≥ 0.117"),
    # a bound that decides: Thermalizer > 1.2, so |T − s| ≥ 0.317 > |SNS − s| = 0.083
    (0.8, 1.2, 0.883, True, "left_down is closer to the solver"),
])
def test_a_time_beyond_the_lag_window_is_a_bound_that_decides_only_when_it_can(
        sns, beyond, solver, holds, words):
    v = verdicts(DRIFTS, _report(1.0, [0.2, 0.2], tau=sns), _report(1.0, [0.2, 0.2], beyond=beyond),
                 solver_tau=solver)[2]
    assert v["holds"] is holds
    assert words in v["numbers"]
    assert f"> {beyond:g} (beyond the lag window)" in v["numbers"]
    if holds is None:
        assert "undecided because the time of thermalizer[match=left_down] lies beyond the" in (
            v["numbers"])


def test_decorrelation_undecided_without_an_autocorrelation():
    v = verdicts(DRIFTS, _report(1.0, [0.2, 0.2]), _report(1.0, [0.2, 0.2], tau=1.2))[2]
    assert v["holds"] is None and "undecided because left_down has no decorrelation time" in (
        v["numbers"])
