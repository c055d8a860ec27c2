"""What a study's rollouts cost: pilots that match a Thermalizer's cost to another method, the
network work per member-step, and the wall and CPU time of every invocation that worked on a
rollout, so that a rollout resumed after a kill is costed whole.

Work. Per member-step, a rollout's work is one emulator forward, the refinement forwards its
store records for that step (`moves`) and a levels-only pass where it estimated levels
(`levels` ≥ 0); the evaluation report sums them over the whole store. Times the FLOPs of one pass
of each network (`pass_flops`, recorded in the cost JSON) that is its FLOPs per member-step.

Time. Every invocation that rolls a method out adds an entry to the ledger
`rollouts/<method>.invocations.json` (started, the step it started from, wall and CPU seconds of
this process, state) and rewrites it every `HEARTBEAT` seconds while it runs, so an invocation
killed without a word still counts up to its last heartbeat (state "running"). When the rollout
finishes, the ledger is copied into its cost JSON `rollouts/<method>.json` under `invocations`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sns_engine.config import RolloutConfig, write_json
from sns_engine.study.config import StudyConfig

if TYPE_CHECKING:
    from sns_engine.engine.rollout import EngineStats

MATCH_TOLERANCE = 0.10        # a matched Thermalizer's cost is within ±10 % of its target's
THERMALIZER_CANDIDATES = (1, 2, 3, 4, 5, 6, 8, 11, 15, 20, 30, 50)  # starts tried by match=
HEARTBEAT = 30.0              # seconds between ledger updates while a rollout runs


# ------------------------------------------------------------------------------ pilots
def match_thermalizer(cfg: StudyConfig, bundle, initial: torch.Tensor, target: dict[str, Any],
                      own: dict[str, Any]) -> dict[str, Any]:
    """Pilot rollouts (`pilot_steps` steps, the study's members): the target's FLOPs per
    member-step, then the Thermalizer's at each candidate start (stop below it); the chosen start
    is the candidate whose cost is closest to the target's."""
    goal = pilot_cost(cfg, bundle, initial, target)
    stop = own.get("thermalizer_stop", RolloutConfig.thermalizer_stop)
    trials = []
    for start in THERMALIZER_CANDIDATES:
        settings = {**own, "thermalizer_start": start, "thermalizer_stop": min(stop, start - 1)}
        trials.append({"thermalizer_start": start, "thermalizer_stop": settings["thermalizer_stop"],
                       **pilot_cost(cfg, bundle, initial, settings)})
    best = min(trials, key=lambda t: (abs(t["flops_per_member_step"] / goal["flops_per_member_step"]
                                          - 1), -t["thermalizer_start"]))
    ratio = best["flops_per_member_step"] / goal["flops_per_member_step"]
    return {"target_cost": goal, "trials": trials, "ratio": ratio,
            "within_tolerance": abs(ratio - 1) <= MATCH_TOLERANCE,
            "chosen": {k: best[k] for k in ("thermalizer_start", "thermalizer_stop")}}


def pilot_cost(cfg: StudyConfig, bundle, initial: torch.Tensor,
               settings: dict[str, Any]) -> dict[str, float]:
    """Work per member-step of a `pilot_steps` in-memory rollout with `settings`."""
    stats = _pilot(cfg, bundle, initial, settings, cfg.pilot_steps)
    return work_per_member_step(stats, len(initial))


def pass_flops(cfg: StudyConfig, bundle, initial: torch.Tensor,
               settings: dict[str, Any]) -> dict[str, int]:
    """FLOPs per member of one pass of each network of `settings`' path (`emulator`, the
    denoiser's full `forward`, its `levels`-only pass), from a one-member, one-step rollout."""
    stats = _pilot(cfg, bundle, initial[:1], settings, 1)
    return dataclasses.asdict(stats.per_member())


def _pilot(cfg: StudyConfig, bundle, initial: torch.Tensor, settings: dict[str, Any],
           steps: int) -> EngineStats:
    from sns_engine.api import rollout

    options = {k: v for k, v in settings.items() if k != "path"}
    return rollout(bundle, batch=len(initial), steps=steps, path=settings["path"], initial=initial,
                   seed=cfg.seed, quiet=True, device=str(initial.device), **options).stats


def work_per_member_step(stats: EngineStats, members: int) -> dict[str, float]:
    """Network work per member and physical step: member-forwards (full forwards incl. the
    emulator's), levels-only passes, FLOPs (both)."""
    member_steps = max(stats.physical_steps, 1) * members
    return {"member_forwards_per_member_step": stats.useful_member_forwards / member_steps,
            "level_passes_per_step": stats.level_passes / max(stats.physical_steps, 1),
            "flops_per_member_step": stats.useful_flops / member_steps}


# ------------------------------------------------------------------------------ one invocation
def rollout_cost(stats: EngineStats, wall: float, members: int) -> dict[str, Any]:
    """Cost per physical step of one invocation's part of a rollout, from its EngineStats and
    measured wall seconds (engine start-up and store writes included), and the FLOPs of one pass
    of each network (`pass_flops`). A run resumed after its last step measured nothing: its
    per-step costs are None."""
    steps = stats.physical_steps
    per_step = (lambda x: x / steps) if steps else (lambda x: None)
    work = work_per_member_step(stats, members) if steps else {}
    return {"physical_steps_measured": steps, "wall_seconds": wall,
            "seconds_per_step": per_step(wall), "forwards_per_step": per_step(stats.forwards),
            "member_forwards_per_member_step": work.get("member_forwards_per_member_step"),
            "flops_per_member_step": work.get("flops_per_member_step"),
            "useful_fraction": stats.useful_fraction if steps else None,
            "pass_flops": dataclasses.asdict(stats.per_member())}


@contextmanager
def invocation(ledger: Path, from_step: int, fresh: bool) -> Iterator[list[dict[str, Any]]]:
    """Time this invocation's work on a rollout into `ledger` (a new ledger when `fresh`: the
    rollout starts over). Yields the ledger's entries, final once the block has exited."""
    old = [] if fresh or not ledger.exists() else json.loads(ledger.read_text())["invocations"]
    entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "from_step": from_step,
             "wall_seconds": 0.0, "cpu_seconds": 0.0, "state": "running"}
    entries = [*old, entry]
    wall, cpu, lock, stop = time.perf_counter(), time.process_time(), threading.Lock(), threading.Event()

    def record(state: str) -> None:
        with lock:
            entry.update(wall_seconds=round(time.perf_counter() - wall, 3),
                         cpu_seconds=round(time.process_time() - cpu, 3), state=state)
            write_json(ledger, {"invocations": entries})

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            record("running")

    ledger.parent.mkdir(parents=True, exist_ok=True)
    record("running")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    state = "interrupted"
    try:
        yield entries
        state = "finished"
    finally:
        stop.set()
        thread.join()
        record(state)


# ------------------------------------------------------------------------------ whole rollout
def whole_rollout(cost: dict[str, Any], report: dict[str, Any], steps: int, members: int,
                  last_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cost of a whole rollout of `steps` physical steps and `members` members: its work per
    member-step from the moves and levels its store records (`report`, the evaluation report),
    and the wall and CPU seconds of every recorded invocation (`cost["invocations"]`). A cost
    JSON from before invocations were recorded has only its last invocation's wall seconds (and
    `last_run`, the stage's last run in stages.json, its CPU seconds): `timed_steps` says how
    many of the steps the times cover."""
    member_steps = steps * members
    moves = (report.get("moves") or {}).get("mean") or 0.0
    estimates = sum((report.get("levels") or {}).get("n_x", {}).get("count", []))
    levels = estimates / member_steps
    flops = cost.get("pass_flops")
    out = {"refinement_forwards_per_member_step": moves,
           "member_forwards_per_member_step": 1 + moves,
           "level_passes_per_member_step": levels,
           "flops_per_member_step": (flops["emulator"] + moves * flops["forward"]
                                     + levels * flops["levels"]) if flops else None}
    parts = cost.get("invocations")
    if parts:
        first = parts[0]["from_step"]  # None: a resumed invocation that could not tell
        timed = None if first is None else steps - first
        wall, cpu = (sum(p[k] for p in parts) for k in ("wall_seconds", "cpu_seconds"))
        killed = sum(p["state"] != "finished" for p in parts)
    else:
        timed, wall = cost["physical_steps_measured"], cost["wall_seconds"]
        cpu, killed, parts = (last_run or {}).get("cpu_seconds"), None, []
    return {**out, "invocations": len(parts) or None, "killed_invocations": killed,
            "timed_steps": timed, "steps": steps, "wall_seconds": wall, "cpu_seconds": cpu,
            "seconds_per_step": wall / timed if timed else None}
