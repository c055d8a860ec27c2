"""Freed CPU memory kept for reuse. glibc's malloc hands a large freed block back to the system:
an allocation above its mmap threshold (128 KiB at first, then the largest block freed, up to
32 MiB) is a mapping of its own, unmapped when freed, and the heap's top above the trim
threshold is trimmed. So the next tensor of that size is mapped anew and each of its pages is
faulted in and zeroed on first touch. The CPU engine allocates such tensors all the time: the
U-Net's activations (up to 16 MiB a chunk of 16 members at 64²) and their outputs. A 20-step
rollout of 64 members on one thread took 730 000 page faults, and ran 9 % faster without them
(one run each, Intel Xeon, 2026-12-03; engine steps A/B, −10 % at batch 64: bench/README.md).

`keep_freed_memory()`, which the CPU engine calls, fixes the mmap threshold at 32 MiB (the
ceiling of glibc's own dynamic threshold) and the trim threshold at 1 GiB, once per process, so
freed blocks are reused: the process keeps the memory of its peak. Elsewhere (not glibc) it does
nothing.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                     # blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30                      # free heap top kept up to this size


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring), once per process; whether the
    C library took both."""
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the process's own C library
    except (OSError, AttributeError):         # no dlopen(NULL), or no mallopt: not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
