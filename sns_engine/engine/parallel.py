"""Member-split parallelism of the CPU engine: the member chunks of one network call run at once on
a small pool of Python threads, each op on one torch thread.

torch releases the GIL inside its ops, so `workers` threads that each run a chunk of members keep
`workers` cores busy with no barrier between them: a thread that loses its core to another process
delays only its own chunk, where torch's own intra-op threads spin-wait on each other at every op
(two of them ran 4.3× slower than one beside another process, sns_engine/threads.py). Each
member's result is computed by the same code as in one thread, only the chunks are spread;
outputs are concatenated in member order.

The pool watches the cores other processes leave it (`CoreLoad`): while they leave it a single
free core, a call runs in the caller's thread, since two workers sharing one core wait on the
slower chunk (0.93× one thread at batch 16 beside a spin loop, bench/test_cores.py); it takes
the second core back once free. Where the networks are batch-invariant (`regroup`: the U-Net's
CPU fast path on a CPU whose convs are, models.unet_cpu.convs_batch_invariant) the call then runs
in the chunks one thread would run, as large as they were; elsewhere its chunks stay those of
`workers` workers, run one after another. Either way what a rollout computes never depends on
the load: a run and its resumed twin agree bit for bit.

The Engine owns one pool for its lifetime (`Engine.close`) and runs each step on one torch thread
(`threads.torch_threads(1)`), so that the step's own ops do not spin either.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

PROC_STAT = "/proc/stat"


class CoreLoad:
    """The cores that other processes keep busy among this process's (its CPU affinity): the busy
    time of those CPUs in /proc/stat less this process's own CPU time, per wall second, over
    windows of at least `window` seconds (the last full window's figure). Where /proc/stat is
    unreadable (not Linux) no core is ever seen busy."""

    def __init__(self, window: float = 0.5, first_window: float = 0.1) -> None:
        self.cpus = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else list(range(os.cpu_count() or 1)))
        self.window, self._window = first_window, window  # a short first one: a busy core is seen early
        self.others = 0.0
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall, busy CPU seconds of our CPUs, this process's CPU seconds), None if unreadable."""
        try:
            with open(PROC_STAT) as stat:
                lines = stat.read().splitlines()
        except OSError:
            return None
        busy, ours = 0, {f"cpu{i}" for i in self.cpus}
        for line in lines:
            name, *times = line.split()
            if name in ours:  # user nice system idle iowait irq softirq steal …: all but idle, iowait
                ticks = [int(t) for t in times[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]
        return time.monotonic(), busy / self._tick, time.process_time()

    def busy_cores(self) -> float:
        """Cores' worth of CPU time other processes took over the last full window (/proc/stat is
        read once a window has passed, not on every network call)."""
        if self._last is None or time.monotonic() - self._last[0] < self.window:
            return self.others
        now = self._sample()
        if now is None:
            return self.others
        wall = now[0] - self._last[0]
        self.others = max(0.0, ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall)
        self._last, self.window = now, self._window
        return self.others

    def free_cores(self) -> int:
        """This process's cores less those others keep busy (rounded), at least one."""
        return max(1, round(len(self.cpus) - self.busy_cores()))


class ChunkPool:
    """`workers` threads (≥ 2) that run the member chunks of a call concurrently, or none while
    `CoreLoad` finds a single core free, then in one thread's chunks if `regroup` (module
    docstring); `close` (or the pool's garbage collection) joins them."""

    def __init__(self, workers: int, load: CoreLoad | None = None, regroup: bool = False) -> None:
        if workers < 2:
            raise ValueError(f"a ChunkPool needs at least 2 workers, got {workers}")
        self.workers, self.regroup = workers, regroup
        self.load = CoreLoad() if load is None else load
        # torch's thread count (ATen's OpenMP, MKL's) is per thread, and a new thread's MKL would
        # use every core: each worker sets its own to one
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="sns-chunk",
                                            initializer=torch.set_num_threads, initargs=(1,))
        self._finalizer = weakref.finalize(self, self._executor.shutdown)

    def active(self) -> int:
        """Workers a call runs on now: `workers`, or 1 (the caller's thread) while other processes
        leave this process a single free core."""
        return 1 if self.load.free_cores() == 1 else self.workers

    def chunk_size(self, rows: int, most: int) -> int:
        """Members per chunk of a call of `rows` members: at most `most` (activations in cache),
        in as few chunks as that allows, their number a multiple of the workers (of the active
        ones if `regroup`, else of all whatever the load, so that results do not follow it) and
        of near-equal sizes, so that none waits on another's last chunk (40 members on 2 workers:
        4 chunks of 10, where chunks of 16 left one worker 8 members to run alone). Not smaller:
        the U-Net costs more per member in small chunks (the refiner on one core: 7.6 ms per
        member alone, 4.9 in chunks of 8, 4.5 in chunks of 10–16)."""
        workers = self.active() if self.regroup else self.workers
        chunks = workers * math.ceil(rows / (workers * most))
        return max(1, math.ceil(rows / chunks))

    def map(self, fn: Callable[..., Any], parts: Sequence[tuple[torch.Tensor, ...]]) -> list[Any]:
        """[fn(*part) for part in parts], computed on the pool under the caller's grad mode and CPU
        autocast (both thread-local in torch), in order; in the caller's thread while one worker
        is active."""
        if self.active() == 1:
            return [fn(*part) for part in parts]
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

        def call(part: tuple[torch.Tensor, ...]) -> Any:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", autocast[1], autocast[0]):
                return fn(*part)

        return list(self._executor.map(call, parts))

    def close(self) -> None:
        """Join the threads (idempotent)."""
        self._finalizer()
