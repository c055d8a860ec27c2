"""Freed CPU memory kept for reuse (sns_engine.memory): with `keep_freed_memory`, the U-Net's
activations are allocated again and again without faulting pages in anew. Measured in fresh
processes (the setting is per process), with and without it: the default bundle's refiner at
batch 16 on the CPU fast path, faults per forward after three warm-up forwards."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sns_engine.memory import keep_freed_memory

FAULTS = """
import resource, sys, torch
from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
refiner = load_bundle(DEFAULT_BUNDLE).model("refiner")
x = torch.randn(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    for _ in range(3):
        refiner(x, x.flip(-1), x.flip(-2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        refiner(x, x.flip(-1), x.flip(-2))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _faults_per_forward(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True, timeout=300)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_the_unet_reuses_freed_memory():
    default, kept = _faults_per_forward("default"), _faults_per_forward("keep")
    if default < 500:
        pytest.skip(f"this C library faults {default} pages a forward anyway: nothing to keep")
    assert kept * 10 < default, f"{kept} page faults a forward kept, {default} by default"


@pytest.mark.skipif(GLIBC, reason="not glibc")
def test_elsewhere_it_does_nothing():
    assert not keep_freed_memory()
