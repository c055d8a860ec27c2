"""Member-split parallelism of the CPU engine: the member chunks of one network call run at once on
a small pool of Python threads, each op on one torch thread.

torch releases the GIL inside its ops, so `workers` threads that each run a chunk of members keep
`workers` cores busy with no barrier between them: a thread that loses its core to another process
delays only its own chunk, where torch's own intra-op threads spin-wait on each other at every op
(two of them ran 4.3× slower than one beside another process, sns_engine/threads.py). Each
member's result is computed by the same code as in one thread, only the chunks are spread;
outputs are concatenated in member order.

The Engine owns one pool for its lifetime (`Engine.close`) and runs each step on one torch thread
(`threads.torch_threads(1)`), so that the step's own ops do not spin either.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class ChunkPool:
    """`workers` threads (≥ 2) that run the member chunks of a call concurrently; `close` (or the
    pool's garbage collection) joins them."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a ChunkPool needs at least 2 workers, got {workers}")
        self.workers = workers
        # torch's thread count (ATen's OpenMP, MKL's) is per thread, and a new thread's MKL would
        # use every core: each worker sets its own to one
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="sns-chunk",
                                            initializer=torch.set_num_threads, initargs=(1,))
        self._finalizer = weakref.finalize(self, self._executor.shutdown)

    def chunk_size(self, rows: int, most: int) -> int:
        """Members per chunk of a call of `rows` members: at most `most` (activations in cache),
        else an even share per worker. Not smaller, for balance when a core is busy: the U-Net
        costs more per member in smaller chunks (one core, batch 32: 10.3 ms per member in chunks
        of 16, 12.1 in chunks of 8, 14.2 in chunks of 4), and two chunks per worker measured no
        faster beside a busy core and slower on free ones (bench/test_cores.py)."""
        return max(1, min(most, math.ceil(rows / self.workers)))

    def map(self, fn: Callable[..., Any], parts: Sequence[tuple[torch.Tensor, ...]]) -> list[Any]:
        """[fn(*part) for part in parts], computed on the pool under the caller's grad mode and CPU
        autocast (both thread-local in torch), in order."""
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

        def call(part: tuple[torch.Tensor, ...]) -> Any:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", autocast[1], autocast[0]):
                return fn(*part)

        return list(self._executor.map(call, parts))

    def close(self) -> None:
        """Join the threads (idempotent)."""
        self._finalizer()
