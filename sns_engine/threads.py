"""How many threads torch computes with, chosen in one place for the command line and the API.

Every public function that runs networks (rollout, train, calibrate, evaluate) or solvers
(generate_data) runs under `torch_threads`, which sets torch's intra-op threads for the call and
restores the caller's setting afterwards. A CPU rollout's steps compute otherwise: their network
calls split the members over `threads` worker threads of one torch thread each
(sns_engine/engine/parallel.py), and every other op of a step runs on one torch thread; while
other processes leave it a single free core, a call runs in the step's thread
(engine.parallel.CoreLoad), so the split does not wait on a worker that shares a core.
`sns_engine.rollout(threads=N)` and `sns-engine rollout --threads N` name N, the cores the rollout
computes on: its steps' workers, and torch's threads for the rest of the call (loading, initial
states, writing). Without a choice, a rollout's steps take `default_workers()`, every core this
process may use (shared among the node's torchrun ranks), and the rest `default_threads`:

- on a machine with at most 2 cores, one thread per process. Measured on the 2-core machine
  with other work on its cores (README, "Use"): `rollout(batch=64, steps=10)` took 42 s on 1
  thread and 275 s on torch's default 2 beside a test suite, 328 s and 1 479 s beside two study
  rollouts (two threads of one process wait on each other whenever another process holds a
  core); the CLI has always run one;
- on a larger machine, the cores this process may use, shared evenly among the ranks torchrun
  starts on the node (LOCAL_WORLD_SIZE), at least one each.

`rollout(processes=N)` (`--processes N`) splits the members over N spawned worker processes
instead, each on one torch thread with no worker threads (sns_engine/engine/processes.py); the
default is one process, split over threads as above.

The solvers have their own threads: pyqg's OpenMP runtime reads OMP_NUM_THREADS, which the QG
system and the CLI set to 1 before it starts; jax's XLA runtime sizes its own pool.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sns_engine.config import ConfigError, check_type

F = TypeVar("F", bound=Callable[..., Any])


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Worker threads of a CPU rollout's steps when the caller names none: the cores this process
    may use, shared evenly among the ranks torchrun starts on the node, at least one each."""
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def default_threads() -> int:
    """torch threads per process when the caller names none (see the module docstring)."""
    return 1 if available_cores() <= 2 else default_workers()


def check_threads(threads: Any) -> None:
    """Raise ConfigError unless `threads` is None (automatic) or a positive int."""
    if threads is None:
        return
    check_type("threads", threads, int)
    if threads < 1:
        raise ConfigError(f"threads must be a positive int or None (automatic), got {threads}")


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with torch's intra-op threads set to `threads` (None: `default_threads()`),
    then restore the caller's setting. Yields the number in force."""
    import torch

    check_threads(threads)
    wanted = default_threads() if threads is None else threads
    before = torch.get_num_threads()
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def with_torch_threads(fn: F) -> F:
    """Decorator: run `fn` under `torch_threads`, with its `threads` argument if it takes one."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(kwargs.get("threads")):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
