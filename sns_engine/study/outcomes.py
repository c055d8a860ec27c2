"""What became of a method's members and how fast its ensemble decorrelates, read from its
evaluation report (`diagnostics.evaluate.evaluate`), with what the report cannot tell kept as a
bound rather than dropped.

Fates. A member is *stable* to the horizon, *unstable* (its spectrum error or kinetic energy left
the bounds: it was seen to leave the attractor) or *flagged* (the engine flagged and froze it, e.g.
the Thermalizer's noise limit, before it was seen unstable). A flagged member's stability time is
censored, not an instability: it was stopped, so all we know is that it was stable until then.
The survival curve and its median are therefore Kaplan–Meier estimates: unstable members are
events at their stability time, flagged members are censored at their flag time, stable ones at the
horizon. Without flagged members this is the plain fraction of members stable, and the median the
plain median of the stability times.

Decorrelation. The time at which the ensemble's autocorrelation first falls to 1/e is exact when
it does so within the lag window, and a lower bound (`> window`) when it never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FATES = ("stable", "unstable", "flagged")


def fates(report: dict[str, Any]) -> dict[str, int]:
    """How many members are stable, unstable and flagged (by the first rule that fired)."""
    rules = report["stability"]["rule"]
    counts = {"stable": rules.count(None), "flagged": rules.count("flag")}
    return {**counts, "unstable": len(rules) - sum(counts.values())}


def survival(report: dict[str, Any]) -> dict[str, Any]:
    """The Kaplan–Meier survival of the members with flagged ones censored: `time` (every saved
    state from 0 to the horizon), `fraction` (the estimate there), `censored` (the flag times),
    `median` (time units of the report; None where the estimate does not fall to ½) and the
    `fates` counts."""
    stability = report["stability"]
    horizon = report["snapshots"] * report["snapshot_dt"]
    times = [math.inf if t is None else t for t in stability["times"]]
    events = [rule not in (None, "flag") for rule in stability["rule"]]
    steps = kaplan_meier(times, events)
    grid = [i * report["snapshot_dt"] for i in range(report["snapshots"] + 1)]
    fraction, k = [], 0
    for t in grid:
        while k < len(steps) and steps[k][0] <= t + 1e-9 * horizon:
            k += 1
        fraction.append(steps[k - 1][1] if k else 1.0)
    censored = sorted(t for t, rule in zip(times, stability["rule"], strict=True) if rule == "flag")
    return {"time": grid, "fraction": fraction, "censored": censored,
            "median": km_median(steps), "fates": fates(report)}


def kaplan_meier(times: list[float], events: list[bool]) -> list[tuple[float, float]]:
    """(event time, survival just after it) at each distinct event time. A member is at risk at
    time t while its own time is ≥ t (a censored member censored at t counts as at risk at t)."""
    out, survive = [], 1.0
    for t in sorted({t for t, e in zip(times, events, strict=True) if e}):
        at_risk = sum(u >= t for u in times)
        died = sum(u == t and e for u, e in zip(times, events, strict=True))
        survive *= 1 - died / at_risk
        out.append((t, survive))
    return out


def km_median(steps: list[tuple[float, float]]) -> float | None:
    """The median of a Kaplan–Meier curve: the first event time at which survival falls below ½;
    where it sits exactly at ½, the midpoint up to the next event (so the plain median when
    nothing is censored); None where it never falls to ½ or stays at ½ to the end."""
    for i, (t, s) in enumerate(steps):
        if math.isclose(s, 0.5):
            return (t + steps[i + 1][0]) / 2 if i + 1 < len(steps) else None
        if s < 0.5:
            return t
    return None


@dataclass(frozen=True)
class Bound:
    """A quantity known to lie in [low, high]: exact when low == high, a lower bound when high is
    inf."""

    low: float
    high: float

    @property
    def exact(self) -> bool:
        return self.low == self.high

    def distance(self, other: Bound) -> Bound:
        """The range of |a − b| over a in self and b in other."""
        return Bound(max(0.0, self.low - other.high, other.low - self.high),
                     max(self.high - other.low, other.high - self.low))

    def text(self) -> str:
        """'0.598', '> 1' or '∈ [0.1, 0.2]' (three significant digits)."""
        if self.exact:
            return f"{self.low:.3g}"
        if math.isinf(self.high):
            return f"> {self.low:.3g}"
        return f"∈ [{self.low:.3g}, {self.high:.3g}]"


def decorrelation(report: dict[str, Any]) -> Bound | None:
    """The ensemble's decorrelation time: exact, or `> last lag` when its autocorrelation stays
    above 1/e over the whole lag window; None without an autocorrelation or where it is NaN."""
    acf = report.get("autocorrelation")
    if not acf:
        return None
    tau = acf["decorrelation_time"]["ensemble"]
    if tau is not None:
        return Bound(tau, tau)
    values = acf["ensemble"]
    if values and all(math.isfinite(v) and v > math.exp(-1) for v in values):
        return Bound(acf["lag_time"][-1], math.inf)
    return None
