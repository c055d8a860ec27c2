"""Two cores against one: the CPU engine's member split against torch's own intra-op threads, with
both cores free and with the other core busy.

One physical step of the engine (embedded default bundle, path `left_down`, Kolmogorov setting:
every member refined) from the same states, at batches 16 and 64, three ways:

- `1 thread` (the baseline): one torch thread, the network calls' chunks one after another;
- `2 workers`: the member split (`Engine(workers=2)`, engine/parallel.py), what a rollout on a
  2-core machine runs by default: the chunks of each call on two threads, one torch thread each;
- `torch 2 threads`: torch's intra-op threads (2, its own default here) inside every op, the chunks
  one after another: the old alternative.

Each once with both cores free and once beside a spin loop (a Python `while` loop in a subprocess,
started for the case and killed after it, as another process holding a core): `step[mode,
free|busy, batch=B]`. The summary groups the three per batch and load: `x.xx× vs 1 thread` is two
cores against one. Every case first checks its step against the per-member reference
(bench/test_engine.py's `check_engine`), then times it.
extra_info: threads (cores asked for), mode (single, member_split, intra_op), busy, batch.

`rollout[mode, free|busy, batch=B]` times whole `sns_engine.rollout` calls (ROLLOUT_STEPS steps,
20 unless SNS_BENCH_ROLLOUT_STEPS says otherwise, in memory) the same three ways but for the
last: `1 thread` (threads=1, the baseline), `2 workers` (the default, threads=None: on two cores
the steps on 2 workers, the rest of the call on one torch thread; threads=2 would run the rest
on torch's 2 threads, which spin beside a busy core) and `2 processes`
(processes=2: the members split over two spawned worker processes of one thread each,
sns_engine/engine/processes.py), the workers' start (spawn, imports, bundle loading) included:
what a caller waits for. Under --bench-long only (minutes in all). Each checks its levels and
moves against the 1-thread rollout's: the same for at least AGREE of the member-steps (all of
them where the U-Net's fast path is batch-invariant, ops.row_linear: on the AVX-512 CPUs
measured; elsewhere a split changes the float rounding and a near-tied head reading can flip,
after which that member walks otherwise; a broken split differs everywhere); extra_info's
`agreement` says how many.
extra_info: threads, processes, steps, mode (single, member_split, processes), busy, batch.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import sns_engine
from sns_engine.engine.rollout import RolloutResult
from sns_engine.threads import available_cores, torch_threads

from .report import describe
from .test_engine import _config, _engine, _setup, _time_engine, check_engine

# mode → (name, threads, workers, torch threads)
MODES = {"single": ("1 thread", 1, 1, 1), "member_split": ("2 workers", 2, 2, 1),
         "intra_op": ("torch 2 threads", 2, 1, 2)}
ROUNDS = 3
# rollout mode → (name, threads, processes)
ROLLOUTS = {"single": ("1 thread", 1, 1), "member_split": ("2 workers", None, 1),
            "processes": ("2 processes", 1, 2)}
# long enough for the workers' start (seconds) not to be the whole story; SNS_BENCH_ROLLOUT_STEPS
# sets another (a long rollout, where the start is paid once)
ROLLOUT_STEPS = int(os.environ.get("SNS_BENCH_ROLLOUT_STEPS", "20"))
ROLLOUT_ROUNDS = 2
AGREE = 0.95         # of member-steps whose levels and move match the 1-thread rollout's
# a busy core that never outlives the benchmark: the loop ends when its parent has gone
SPIN = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(10 ** 6): pass"


@pytest.fixture
def busy(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Whether the other core is busy: a spin loop in a subprocess for the case, always killed."""
    if not request.param:
        yield False
        return
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())])
    try:
        yield True
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(available_cores() < 2, reason="needs two cores")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("busy", [False, True], ids=["free", "busy"], indirect=True)
@pytest.mark.parametrize("batch", [16, 64])  # the slowest-varying: free and busy side by side
def test_cores_cpu(benchmark, busy, batch, mode):
    name, threads, workers, torch_count = MODES[mode]
    load = "busy" if busy else "free"  # the other core
    describe(benchmark, f"step[{name}, {load}, batch={batch}]", group=f"cores, {load}, batch={batch}",
             baseline=mode == "single", member_steps=batch)
    benchmark.extra_info.update(threads=threads, mode=mode, busy=busy, batch=batch)
    bundle, x0 = _setup("cpu", batch)
    with torch_threads(torch_count), _engine(bundle, x0, _config(bundle, "kolmogorov"),
                                             workers=workers) as engine:
        _time_engine(benchmark, engine, 1, ROUNDS,
                     lambda: check_engine(engine, "kolmogorov", None, 1, False))


def _rollout(batch: int, threads: int | None, processes: int) -> RolloutResult:
    return sns_engine.rollout(batch=batch, steps=ROLLOUT_STEPS, quiet=True, threads=threads,
                              processes=processes)


@functools.cache
def _reference(batch: int) -> RolloutResult:
    """The 1-thread rollout the others are checked against, once per batch (untimed)."""
    return _rollout(batch, 1, 1)


@pytest.mark.long  # a minute or more per case: only with --bench-long
@pytest.mark.skipif(available_cores() != 2, reason="the default's 2 workers: needs two cores")
@pytest.mark.parametrize("mode", list(ROLLOUTS))
@pytest.mark.parametrize("busy", [False, True], ids=["free", "busy"], indirect=True)
@pytest.mark.parametrize("batch", [16, 64])
def test_cores_rollout(benchmark, busy, batch, mode):
    name, threads, processes = ROLLOUTS[mode]
    load = "busy" if busy else "free"
    describe(benchmark, f"rollout[{name}, {load}, batch={batch}]", group=f"rollout, {load}, batch={batch}",
             baseline=mode == "single", member_steps=batch * ROLLOUT_STEPS)
    benchmark.extra_info.update(threads=threads, processes=processes, mode=mode, busy=busy, batch=batch,
                                steps=ROLLOUT_STEPS)
    result = benchmark.pedantic(_rollout, args=(batch, threads, processes), rounds=ROLLOUT_ROUNDS)
    reference = _reference(batch)
    same = (result.levels == reference.levels).all(-1) & (result.moves == reference.moves)
    benchmark.extra_info.update(agreement=float(same.float().mean()),
                                states_equal=bool(torch.equal(result.states, reference.states)))
    assert float(same.float().mean()) >= AGREE, (
        f"{name}: levels and moves match the 1-thread rollout's for {float(same.float().mean()):.1%} "
        f"of member-steps (need {AGREE:.0%})")
