"""The refine tick and the re-noise: fused kernels against the torch reference, across batches.

State: QG-sized frames (2 × 64 × 64), every member moving both frames at level N = 1000 (the
cosine schedule's tables), levels reset before each round. extra_info: bytes of a call (per moving
frame and pixel: frame read + ε̂ read + frame written; the noise is made in registers), whose GB/s
the run's summary prints, to set against the memory roofline (H200: ~4.8 TB/s).
CPU runs the torch path only (Triton needs CUDA outside the tests' interpreter); the triton and
cuda cases skip without CUDA (and the extension). Run: `pytest bench/test_ddpm_update.py
--benchmark-only`.
"""

from __future__ import annotations

import math

import pytest
import torch

from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.ops import rng
from sns_engine.ops.update import ddpm_tick, renoise

from .cases import DTYPE_NAMES, backend_cases, check_close, describe_case

FRAME = (2, 64, 64)
SCHEDULE = CosineSchedule(1000)
CASES = backend_cases([1, 16, 64])
TICK = ("x", "y", "eps_x", "eps_y", "n_x", "n_y", "moves", "counts", "member", "step", "seed", "coefs")
RENOISE = ("x", "n_x", "member", "step", "seed", "sqrt_ab", "sqrt_1mab", "stream")


def _checked(op, s: dict, keys: tuple[str, ...], backend: str, what: str) -> None:
    """`op` under `backend` against the torch reference on CPU copies of the same state (the frames it
    moves, within 1e-4 of their largest value), before any timing; the state is left as it was."""
    if backend == "torch":
        return
    got = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
    want = {k: v.cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
    op(*(got[k] for k in keys), backend=backend)
    op(*(want[k] for k in keys), backend="torch")
    for frame in ("x", "y") if op is ddpm_tick else ("x",):
        check_close(got[frame], want[frame], 1e-4, f"{what}: {frame}")


def _state(batch: int, device: str, eps_dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    top = SCHEDULE.num_levels
    state = {
        "x": torch.randn(batch, *FRAME, generator=g), "y": torch.randn(batch, *FRAME, generator=g),
        "eps_x": torch.randn(batch, *FRAME, generator=g).to(eps_dtype),
        "eps_y": torch.randn(batch, *FRAME, generator=g).to(eps_dtype),
        "n_x": torch.full((batch,), top, dtype=torch.int32),
        "n_y": torch.full((batch,), top, dtype=torch.int32),
        "moves": torch.full((batch, 2), 3, dtype=torch.int32),
        "counts": torch.full((batch, 2), 2**30, dtype=torch.int32),
        "member": torch.arange(batch), "step": torch.zeros(batch, dtype=torch.int32), "seed": 0,
        "coefs": torch.stack([SCHEDULE.recip_sqrt_alpha, SCHEDULE.eps_coef, SCHEDULE.sigma]),
        "sqrt_ab": SCHEDULE.sqrt_alpha_bar, "sqrt_1mab": SCHEDULE.sqrt_one_minus_alpha_bar,
        "stream": rng.STREAM_RENOISE_X,
    }
    return {k: v.to(device).contiguous() if isinstance(v, torch.Tensor) else v
            for k, v in state.items()}


def _rounds(device: str) -> dict:
    return dict(rounds=50, warmup_rounds=3) if device == "cuda" else dict(rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("eps_dtype", [torch.float32, torch.bfloat16], ids=["eps_fp32", "eps_bf16"])
@pytest.mark.parametrize("backend, device, batch", CASES)
def test_ddpm_tick(benchmark, backend, device, batch, eps_dtype):
    s = _state(batch, device, eps_dtype)
    args = [s[k] for k in TICK]

    def reset():
        s["n_x"].fill_(SCHEDULE.num_levels)
        s["n_y"].fill_(SCHEDULE.num_levels)

    def tick():
        ddpm_tick(*args, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()

    describe_case(benchmark, "ddpm_tick", backend, device, batch, f"eps={DTYPE_NAMES[eps_dtype]}",
                  bytes=2 * batch * math.prod(FRAME) * (4 + eps_dtype.itemsize + 4))
    _checked(ddpm_tick, s, TICK, backend, benchmark.name)
    benchmark.pedantic(tick, setup=reset, **_rounds(device))


@pytest.mark.parametrize("backend, device, batch", CASES)
def test_renoise(benchmark, backend, device, batch):
    s = _state(batch, device, torch.float32)

    def run():
        renoise(*(s[k] for k in RENOISE), backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()

    describe_case(benchmark, "renoise", backend, device, batch, bytes=batch * math.prod(FRAME) * 8)
    _checked(renoise, s, RENOISE, backend, benchmark.name)
    benchmark.pedantic(run, **_rounds(device))
