"""Fused level argmax against the torch reference (which writes the logits), across batches.

Shape of the level head's last layer (DESIGN.md §3): linear 1000 → 1000 (N + 1 = 1001 classes
here). extra_info: bytes_moved by the fused op (features, weight, bias read; idx written), the
logits bytes it avoids (written and read back once by the reference), FLOPs, GB/s and GFLOP/s.
CPU runs the torch path only; triton and cuda skip without CUDA (and the extension).
Run: `pytest bench/test_level_argmax.py --benchmark-only`.
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.ops.level_argmax import level_argmax

from .cases import backend_cases

WIDTH, CLASSES = 1000, 1001
CASES = backend_cases([1, 16, 64, 256])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend, device, batch", CASES)
def test_level_argmax(benchmark, backend, device, batch, dtype):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(batch, WIDTH, generator=g).to(device, dtype)
    weight = (torch.randn(CLASSES, WIDTH, generator=g) / WIDTH**0.5).to(device, dtype)
    bias = torch.randn(CLASSES, generator=g).to(device, dtype)

    def run():
        out = level_argmax(features, weight, bias, return_max_prob=True, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    on_gpu = device == "cuda"
    benchmark.pedantic(run, rounds=50 if on_gpu else 5, warmup_rounds=3 if on_gpu else 1)
    size = dtype.itemsize
    moved = batch * WIDTH * size + CLASSES * (WIDTH + 1) * size + batch * 12
    flops = 2 * batch * CLASSES * WIDTH
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(bytes_moved=moved, logits_bytes_avoided=2 * batch * CLASSES * 4,
                                flops=flops, gb_per_s=moved / mean / 1e9,
                                gflop_per_s=flops / mean / 1e9)
