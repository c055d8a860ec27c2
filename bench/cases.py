"""Benchmark parametrisation shared by the kernel suites: (backend, device, batch) cases, the GPU
ones skipped where CUDA (or the built extension, for backend 'cuda') is missing, and their names."""

import pytest
import torch

from sns_engine.ops import cuda_ext

from .report import describe

GPU_BATCHES = [1, 64, 256, 1024]
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
HAS_CUDA = torch.cuda.is_available()
HAS_CUDA_EXT = HAS_CUDA and cuda_ext.unavailable_reason() is None


def backend_cases(cpu_batches: list[int]) -> list:
    """torch on CPU at `cpu_batches`; torch, triton and cuda on the GPU at GPU_BATCHES."""
    return ([("torch", "cpu", b) for b in cpu_batches]
            + [pytest.param(backend, "cuda", b, marks=pytest.mark.skipif(
                not (HAS_CUDA_EXT if backend == "cuda" else HAS_CUDA), reason=f"{backend} needs CUDA"))
               for backend in ("torch", "triton", "cuda") for b in GPU_BATCHES])


def describe_case(benchmark, op: str, backend: str, device: str, batch: int, *variant: str,
                  **work: float) -> None:
    """Name the case `op[backend, cpu|gpu, *variant, batch=B]` and group it with the other backends
    of the same case, torch the baseline (bench/report.py: `describe`)."""
    case = ", ".join(("gpu" if device == "cuda" else device, *variant, f"batch={batch}"))
    describe(benchmark, f"{op}[{backend}, {case}]", group=f"{op}, {case}", baseline=backend == "torch",
             **work)
