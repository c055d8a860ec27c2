"""Members' fates, survival with frozen members censored, and decorrelation times as bounds."""

import math

import numpy as np
import pytest

from sns_engine.study.outcomes import Bound, decorrelation, fates, kaplan_meier, km_median, survival


def _report(times, rules, snapshots=10, dt=1.0):
    return {"snapshots": snapshots, "snapshot_dt": dt,
            "stability": {"times": times, "rule": rules}}


def test_fates_count_flagged_members_apart_from_unstable_ones():
    r = _report([2.0, None, 3.0, 4.0], ["spectrum", None, "flag", "energy"])
    assert fates(r) == {"stable": 1, "unstable": 2, "flagged": 1}


def test_without_flags_survival_is_the_plain_fraction_and_median():
    times = [1.0, 2.0, 2.0, 5.0, 7.0, None]
    r = _report(times, [None if t is None else "spectrum" for t in times])
    s = survival(r)
    assert s["time"] == [float(i) for i in range(11)]  # every saved state, 0 … horizon
    plain = [np.mean([math.inf if t is None else t for t in times] > np.float64(t))
             for t in s["time"]]
    assert s["fraction"] == pytest.approx(plain)
    # np.median of the stability times (inf for the stable one): (2 + 5) / 2
    assert s["median"] == 3.5 and s["censored"] == []


def test_a_frozen_member_is_censored_not_an_instability():
    # four members: two unstable at 2 and 6, one frozen at 1, one stable
    r = _report([2.0, 6.0, 1.0, None], ["spectrum", "energy", "flag", None])
    s = survival(r)
    assert s["censored"] == [1.0]
    # after the freeze 3 remain at risk: one falls at 2 (2/3 left), one at 6 (of 2 at risk: 1/3)
    assert s["fraction"][1] == 1.0
    assert s["fraction"][2] == pytest.approx(2 / 3)
    assert s["fraction"][6] == pytest.approx(1 / 3)
    assert s["median"] == 6.0  # counted as unstable, the frozen one would give (2 + 6) / 2
    assert s["fates"] == {"stable": 1, "unstable": 2, "flagged": 1}


def test_median_not_reached_when_too_many_are_censored():
    r = _report([1.0, 1.5, 2.0, 3.0], ["flag", "flag", "flag", "spectrum"])
    assert survival(r)["median"] == 3.0  # the one member seen unstable, the last at risk
    r = _report([1.0, 1.5, 2.0, None], ["flag", "flag", "flag", None])
    assert survival(r)["median"] is None


def test_kaplan_meier_ties_and_median_midpoint():
    steps = kaplan_meier([1.0, 1.0, 2.0, math.inf], [True, False, True, False])
    assert steps == [(1.0, pytest.approx(0.75)), (2.0, pytest.approx(0.375))]
    assert km_median([(1.0, 0.5), (3.0, 0.25)]) == 2.0
    assert km_median([(1.0, 0.5)]) is None and km_median([(1.0, 0.75)]) is None


def _acf(values, tau):
    return {"autocorrelation": {"lag_time": [0.1 * i for i in range(len(values))],
                                "ensemble": values,
                                "decorrelation_time": {"ensemble": tau, "reference": 0.2}}}


def test_decorrelation_beyond_the_lag_window_is_a_lower_bound():
    assert decorrelation(_acf([1.0, 0.5, 0.3], 0.15)) == Bound(0.15, 0.15)
    beyond = decorrelation(_acf([1.0, 0.8, 0.6, 0.5], None))
    assert beyond == Bound(pytest.approx(0.3), math.inf) and beyond.text() == "> 0.3"
    assert decorrelation(_acf([1.0, math.nan, 0.5], None)) is None
    assert decorrelation({"autocorrelation": None}) is None


def test_bound_distance_is_the_range_of_the_gap():
    solver, sns, therm = Bound(0.883, 0.883), Bound(0.598, 0.598), Bound(1.0, math.inf)
    assert sns.distance(solver) == Bound(pytest.approx(0.285), pytest.approx(0.285))
    gap = therm.distance(solver)
    assert gap.low == pytest.approx(0.117) and math.isinf(gap.high)
    assert Bound(0.5, 0.7).distance(Bound(0.6, 0.6)) == Bound(0.0, pytest.approx(0.1))
