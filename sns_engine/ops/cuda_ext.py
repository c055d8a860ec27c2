"""The one place Python touches the CUDA extension built from csrc/.

`load()` returns the extension module: the prebuilt `sns_engine._C` if setup.py built it, else a
JIT build of csrc/ with torch.utils.cpp_extension (first call only, cached; needs CUDA torch, nvcc
and a source checkout), else a clear error. `is_built()` and `unavailable_reason()` answer
without compiling anything. The sources and compiler flags are named once, in csrc/manifest.json,
which setup.py and the compile test read too (`build_spec`).
The extension's functions (see csrc/bindings.cpp):

    ddpm_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed, coefs) -> None
    renoise(frame, level, member, step, seed, sqrt_ab, sqrt_1mab, stream) -> None
    level_argmax(features, weight, bias, want_prob) -> (idx, p_max or empty)
    philox_normal(member, step, level, seed, stream, numel) -> (w0, w1, z)

The first three are wrapped below with the arguments and results of the ops' other backends
(ops.dispatch's table points at the wrappers).
"""

from __future__ import annotations

import functools
import importlib
import json
import shutil
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
MANIFEST = CSRC / "manifest.json"
MISSING = "built without CUDA; use backend='triton' or 'torch'"


class CudaExtensionError(ValueError):
    """The CUDA backend was asked for where the extension is not built and cannot be built."""


@functools.cache
def _prebuilt() -> ModuleType | None:
    try:
        return importlib.import_module("sns_engine._C")
    except ImportError:
        return None


def is_built() -> bool:
    """True when the prebuilt extension `sns_engine._C` imports (never compiles)."""
    return _prebuilt() is not None


def unavailable_reason() -> str | None:
    """Why the extension can neither be imported nor JIT-built here; None when it can."""
    if is_built():
        return None
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return "torch has no CUDA device"
    if shutil.which("nvcc") is None:
        return "nvcc is not on PATH"
    if not MANIFEST.is_file() or not all((CSRC / s).is_file() for s in build_spec()["sources"]):
        return f"the CUDA sources are not at {CSRC} (installed without a source checkout)"
    return None


@functools.cache
def build_spec() -> dict:
    """csrc/manifest.json: the extension's `sources` (relative to csrc/), `cxx_flags`,
    `nvcc_flags` and `cuda_arch_list` (H100/H200, sm_90, named explicitly)."""
    return json.loads(MANIFEST.read_text())


@functools.cache
def load() -> ModuleType:
    """The CUDA extension module, prebuilt or JIT-compiled from csrc/ on first use."""
    if is_built():
        return _prebuilt()
    reason = unavailable_reason()
    if reason is not None:
        raise CudaExtensionError(f"{MISSING} ({reason})")
    from torch.utils import cpp_extension

    spec = build_spec()
    return cpp_extension.load(name="sns_engine_C", sources=[str(CSRC / s) for s in spec["sources"]],
                              extra_cflags=spec["cxx_flags"], extra_cuda_cflags=spec["nvcc_flags"])


def ddpm_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed: int,
              coefs: torch.Tensor) -> None:
    """The extension's refine tick (arguments of `sns_engine.ops.update.ddpm_tick`)."""
    load().ddpm_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed, coefs)


def renoise(frame, level, member, step, seed: int, sqrt_ab, sqrt_1mab, stream: int) -> None:
    """The extension's re-noise (arguments of `sns_engine.ops.update.renoise`)."""
    load().renoise(frame, level, member, step, seed, sqrt_ab, sqrt_1mab, stream)


def level_argmax(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 return_max_prob: bool = False):
    """The extension's level argmax: idx, or (idx, p_max) if `return_max_prob`."""
    idx, p_max = load().level_argmax(features, weight, bias, return_max_prob)
    return (idx, p_max) if return_max_prob else idx
