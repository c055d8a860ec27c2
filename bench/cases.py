"""Benchmark parametrisation shared by the kernel suites: (backend, device, batch) cases, the GPU
ones skipped where CUDA (or the built extension, for backend 'cuda') is missing."""

import pytest
import torch

from sns_engine.ops import cuda_ext

GPU_BATCHES = [1, 64, 256, 1024]
HAS_CUDA = torch.cuda.is_available()
HAS_CUDA_EXT = HAS_CUDA and cuda_ext.unavailable_reason() is None


def backend_cases(cpu_batches: list[int]) -> list:
    """torch on CPU at `cpu_batches`; torch, triton and cuda on the GPU at GPU_BATCHES."""
    return ([("torch", "cpu", b) for b in cpu_batches]
            + [pytest.param(backend, "cuda", b, marks=pytest.mark.skipif(
                not (HAS_CUDA_EXT if backend == "cuda" else HAS_CUDA), reason=f"{backend} needs CUDA"))
               for backend in ("torch", "triton", "cuda") for b in GPU_BATCHES])
