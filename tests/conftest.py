"""Test-wide settings. Triton runs through its interpreter on CPU; this must be set before any
kernel module is imported, so it lives here at the top of the root conftest."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
