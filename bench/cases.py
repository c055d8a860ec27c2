"""Benchmark parametrisation shared by the suites: (backend, device, batch) cases, the GPU ones
skipped where CUDA (or the built extension, for backend 'cuda') is missing, their names, and the
check every GPU path passes against its CPU reference before it is timed.

A dry run (SNS_BENCH_DRY_RUN=1, `bash bench/gpu_check.sh --cpu`, with --benchmark-disable) runs the
GPU cases on the CPU at batch 2, Triton through its interpreter, so their Python is exercised where
there is no GPU."""

import os

import pytest
import torch

from sns_engine.ops import cuda_ext

from .report import describe

DRY_RUN = os.environ.get("SNS_BENCH_DRY_RUN") == "1"
HAS_CUDA = torch.cuda.is_available()
GPU = "cuda" if HAS_CUDA else "cpu" if DRY_RUN else None   # the device of the GPU cases
GPU_BATCHES = [1, 64, 256, 1024] if HAS_CUDA else [2]
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
HAS_CUDA_EXT = HAS_CUDA and cuda_ext.unavailable_reason() is None
needs_gpu = pytest.mark.skipif(GPU is None, reason="needs CUDA (SNS_BENCH_DRY_RUN=1: on the CPU, untimed)")


def backend_cases(cpu_batches: list[int]) -> list:
    """torch on CPU at `cpu_batches`; torch, triton and cuda on the GPU at GPU_BATCHES."""
    return ([("torch", "cpu", b) for b in cpu_batches]
            + [pytest.param(backend, GPU, b, id=f"{backend}-gpu-{b}", marks=pytest.mark.skipif(
                GPU is None or backend == "cuda" and not HAS_CUDA_EXT, reason=f"{backend} needs CUDA"))
               for backend in ("torch", "triton", "cuda") for b in GPU_BATCHES])


def describe_case(benchmark, op: str, backend: str, device: str | None, batch: int, *variant: str,
                  **work: float) -> None:
    """Name the case `op[backend, cpu|gpu, *variant, batch=B]` and group it with the other backends
    of the same case, torch the baseline (bench/report.py: `describe`)."""
    case = ", ".join(("gpu" if device == "cuda" else "cpu", *variant, f"batch={batch}"))
    describe(benchmark, f"{op}[{backend}, {case}]", group=f"{op}, {case}", baseline=backend == "torch",
             **work)


def check_close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """`got` against its reference `want` (both compared on the CPU in float64): every element within
    `rel` × max |want|; else an AssertionError naming `what`, so a wrong path is never timed."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    tol = rel * float(want.abs().max().clamp(min=1e-12))
    err = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    assert err <= tol, (f"GPU CHECK FAILED: {what} differs from its CPU reference: max |error| "
                        f"{err:.3g} > {tol:.3g} ({rel:g} × max |reference|)")
