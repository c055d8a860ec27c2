"""Where a CPU rollout's time goes, on one thread and on the default two workers: why the member
split stops short of 2× on two free cores (issue 22 item 7). Not a benchmark: one timed rollout
each way after a warm-up, so run it on an otherwise idle machine.

Wall seconds of each engine phase (the NVTX ranges of engine/profiling.py: `emulator`, `estimate`,
`refine`), of the network calls (the engine's `chunked` calls: every U-Net pass), of those calls
that carry a single member (no split can share one member's pass), of the refinement tick and
re-noise (per-member ops whose Philox draws run in the caller's thread either way), and of the rest
of the call outside the network calls; then the 1-thread / 2-worker ratio of each. Both rollouts
check each other: the same states bit for bit (ops.row_linear), else it says so. Writes
bench/results/cpu-core-phases-<stamp>.json:

    .venv/bin/python -m bench.core_phases [--batch 16 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import time
from pathlib import Path
from unittest import mock

import torch

import sns_engine
from sns_engine.engine import profiling
from sns_engine.engine import rollout as engine_rollout
from sns_engine.threads import available_cores

OUT = Path(__file__).parent / "results"
MODES = {"1 thread": 1, "2 workers": None}  # threads=: None is the default (2 workers on 2 cores)


def _timed(times: collections.Counter, name: str, fn):
    """`fn`, its wall time added to times[name] on every call."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name] += time.perf_counter() - start
    return run


@contextlib.contextmanager
def phase_clock():
    """A Counter of wall seconds per phase, filled while the block rolls out (module docstring)."""
    times: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def phase(name: str):
        start = time.perf_counter()
        yield
        times[name] += time.perf_counter() - start

    original = engine_rollout.chunked

    def chunked(fn, chunk, pool=None):
        inner = original(fn, chunk, pool)

        def run(*inputs):
            start = time.perf_counter()
            out = inner(*inputs)
            spent = time.perf_counter() - start
            times["network calls"] += spent
            times["single-member network calls"] += spent if inputs[0].shape[0] == 1 else 0.0
            return out
        return run

    with (mock.patch.object(profiling, "range", phase),
          mock.patch.object(engine_rollout, "chunked", chunked),
          mock.patch.object(engine_rollout, "ddpm_tick",
                            _timed(times, "tick", engine_rollout.ddpm_tick)),
          mock.patch.object(engine_rollout, "renoise",
                            _timed(times, "re-noise", engine_rollout.renoise))):
        yield times


def measure(batch: int, steps: int) -> dict:
    """Phase times of a `steps`-step default rollout of `batch` members, per mode."""
    rows, states = {}, {}
    for mode, threads in MODES.items():
        sns_engine.rollout(batch=batch, steps=2, quiet=True, threads=threads)  # warm-up
        with phase_clock() as times:
            start = time.perf_counter()
            result = sns_engine.rollout(batch=batch, steps=steps, quiet=True, threads=threads)
            wall = time.perf_counter() - start
        rows[mode] = {"wall": wall, **times,
                      "outside network calls": wall - times["network calls"]}
        states[mode] = result.states
    one, two = rows.values()
    return {"batch": batch, "steps": steps, "seconds": rows,
            "ratio": {name: one[name] / two[name] for name in one if two.get(name)},
            "states_equal": bool(torch.equal(*states.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if available_cores() != 2:
        raise SystemExit(f"this compares 1 thread with the default 2 workers: needs 2 cores, "
                         f"found {available_cores()}")
    report = [measure(b, args.steps) for b in args.batch]
    for entry in report:
        print(f"batch {entry['batch']}, {entry['steps']} steps "
              f"(states equal: {entry['states_equal']})")
        print(f"  {'phase':30s} {'1 thread s':>10s} {'2 workers s':>11s} {'ratio':>6s}")
        for name, ratio in entry["ratio"].items():
            one, two = (entry["seconds"][m][name] for m in MODES)
            print(f"  {name:30s} {one:10.3f} {two:11.3f} {ratio:5.2f}×")
    path = OUT / f"cpu-core-phases-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
