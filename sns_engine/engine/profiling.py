"""NVTX ranges around the engine's phases (emulator, estimate, refine, write).

`nvtx.annotate` costs next to nothing when no profiler is attached; run under
`nsys profile` to see the phases on the timeline.
"""

from __future__ import annotations

import nvtx

DOMAIN = "sns_engine"


def range(name: str):  # noqa: A001 - reads as profiling.range("refine")
    """A context manager marking one engine phase on the NVTX timeline."""
    return nvtx.annotate(name, domain=DOMAIN)
