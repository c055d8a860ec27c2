"""A rollout's cost, whole: every invocation's wall and CPU time in its ledger (a killed one up to
its last heartbeat), and its work per member-step from what its store records."""

import json
import time

import pytest

from sns_engine.study import costs


def _ledger(path):
    return json.loads(path.read_text())["invocations"]


def test_invocations_add_up_across_kills_and_resumes(tmp_path, monkeypatch):
    ledger = tmp_path / "m.invocations.json"
    monkeypatch.setattr(costs, "HEARTBEAT", 0.02)
    with pytest.raises(KeyboardInterrupt), costs.invocation(ledger, 0, fresh=True):
        time.sleep(0.1)
        running = _ledger(ledger)[-1]  # what a kill -9 would leave: the last heartbeat
        assert running["state"] == "running" and running["wall_seconds"] > 0
        raise KeyboardInterrupt
    with costs.invocation(ledger, 120, fresh=False) as parts:
        time.sleep(0.05)
    assert [p["state"] for p in parts] == ["interrupted", "finished"]
    assert [p["from_step"] for p in parts] == [0, 120]
    assert _ledger(ledger) == parts and all(p["wall_seconds"] >= 0.05 for p in parts)
    with costs.invocation(ledger, 0, fresh=True) as parts:  # the rollout starts over
        pass
    assert len(parts) == 1 and len(_ledger(ledger)) == 1


REPORT = {"moves": {"mean": 2.5}, "levels": {"n_x": {"value": [0, 3], "count": [30, 10]}}}
FLOPS = {"emulator": 100, "forward": 40, "levels": 10}


def test_whole_rollout_work_comes_from_the_store_and_time_from_every_invocation():
    parts = [{"from_step": 0, "wall_seconds": 30.0, "cpu_seconds": 20.0, "state": "running"},
             {"from_step": 60, "wall_seconds": 50.0, "cpu_seconds": 45.0, "state": "finished"}]
    cost = {"physical_steps_measured": 40, "wall_seconds": 50.0, "pass_flops": FLOPS,
            "invocations": parts}
    whole = costs.whole_rollout(cost, REPORT, steps=100, members=2)
    assert whole["refinement_forwards_per_member_step"] == 2.5
    assert whole["member_forwards_per_member_step"] == 3.5
    assert whole["level_passes_per_member_step"] == 40 / 200
    assert whole["flops_per_member_step"] == 100 + 2.5 * 40 + 0.2 * 10
    assert (whole["wall_seconds"], whole["cpu_seconds"], whole["timed_steps"]) == (80.0, 65.0, 100)
    assert whole["seconds_per_step"] == 0.8
    assert (whole["invocations"], whole["killed_invocations"]) == (2, 1)


def test_a_cost_from_before_invocations_were_recorded_is_its_last_part():
    cost = {"physical_steps_measured": 40, "wall_seconds": 50.0}  # no ledger, no pass FLOPs
    whole = costs.whole_rollout(cost, REPORT, steps=100, members=2,
                                last_run={"seconds": 51.0, "cpu_seconds": 49.0})
    assert whole["flops_per_member_step"] is None and whole["invocations"] is None
    assert (whole["timed_steps"], whole["wall_seconds"], whole["cpu_seconds"]) == (40, 50.0, 49.0)
    assert whole["seconds_per_step"] == 50.0 / 40
