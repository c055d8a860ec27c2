"""Replaying a batch-size-parameterised computation as captured CUDA graphs.

The engine's work per tick is a closure `fn(size)` over persistent device buffers (it reads and
writes the first `size` rows). On CUDA each distinct size is warmed up (cuDNN / Triton autotune
happen there), captured once into a CUDA graph from a shared memory pool, and replayed after
that. Warm-up runs mutate the buffers, so they are saved before and restored after. Without CUDA
(or with graphs disabled) `fn(size)` simply runs eagerly: one code path either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class Replayer:
    """Runs `fn(size)` eagerly or as one CUDA graph per size."""

    def __init__(self, fn: Callable[[int], None], buffers: Sequence[torch.Tensor], graphs: bool,
                 pool=None, warmup: int = 2):
        self.fn = fn
        self.buffers = list(buffers)
        self.enabled = graphs and torch.cuda.is_available() and all(b.is_cuda for b in self.buffers)
        self.pool = pool
        self.warmup = warmup
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def __call__(self, size: int) -> None:
        if not self.enabled:
            self.fn(size)
            return
        graph = self.graphs.get(size)
        if graph is None:
            graph = self._capture(size)
        graph.replay()

    def _capture(self, size: int) -> torch.cuda.CUDAGraph:
        saved = [b.clone() for b in self.buffers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(size)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.fn(size)
        for buffer, copy in zip(self.buffers, saved, strict=True):
            buffer.copy_(copy)
        self.graphs[size] = graph
        return graph
