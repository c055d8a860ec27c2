"""Fused level argmax against the torch reference (which writes the logits), across batches.

Shape of the level head's last layer (docs/method.md §Network): linear 1000 → 1000 (N + 1 = 1001 classes
here). extra_info: bytes moved by a fused call (features, weight, bias read; idx written), the
logits bytes it avoids (written and read back once by the reference) and FLOPs; the run's summary
prints GFLOP/s and GB/s.
CPU runs the torch path only; triton and cuda skip without CUDA (and the extension).
Run: `pytest bench/test_level_argmax.py --benchmark-only`.
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.ops.level_argmax import level_argmax

from .cases import DTYPE_NAMES, backend_cases, describe_case

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

    size = dtype.itemsize
    describe_case(benchmark, "level_argmax", backend, device, batch, DTYPE_NAMES[dtype],
                  flops=2 * batch * CLASSES * WIDTH,
                  bytes=batch * WIDTH * size + CLASSES * (WIDTH + 1) * size + batch * 12)
    if backend != "torch":  # the chosen class's logit is the largest, in float64 on the CPU
        logits = torch.addmm(*(t.cpu().double() for t in (bias, features, weight.T)))
        chosen = logits.gather(1, run()[0].cpu().long()[:, None])[:, 0]
        gap = float((logits.amax(1) - chosen).max())
        assert gap <= 1e-3 * float(logits.abs().max()), \
            f"GPU CHECK FAILED: {benchmark.name} picks a class {gap:.3g} below the largest logit"
    benchmark.extra_info["logits_bytes_avoided"] = 2 * batch * CLASSES * 4
    on_gpu = device == "cuda"
    benchmark.pedantic(run, rounds=50 if on_gpu else 5, warmup_rounds=3 if on_gpu else 1)
