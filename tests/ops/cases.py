"""Shared by the ops tests: the "cuda" backend as a parametrize case, and random refine-tick
inputs (Triton, CUDA host twins, CUDA)."""

from __future__ import annotations

import pytest
import torch

from sns_engine.ops import cuda_ext

CUDA_EXT_MISSING = cuda_ext.unavailable_reason()  # None where the extension is built or buildable


def cuda_param(value: object) -> object:
    """`value` as a parametrize case of the CUDA extension: the suite-wide `gpu` marker (skipped
    without a CUDA device, tests/conftest.py) and a skip where the extension can be neither
    imported nor JIT-built."""
    return pytest.param(value, id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(CUDA_EXT_MISSING is not None,
                           reason=f"no CUDA extension: {CUDA_EXT_MISSING}")])

# (counts, moves, n_x, n_y) per member kind; None = a random level in 2..N. Between them: phase 0,
# phase 1, idle, every move code, level 1 (σ = 0), level 0 (no-op) and the top level N.
KINDS = (
    ((2, 3), (3, 1), None, None),        # phase 0, both frames
    ((0, 2), (2, 1), 1, 4),              # phase 1, x at level 1 (noiseless step)
    ((0, 0), (3, 3), None, None),        # idle
    ((1, 0), (2, 0), 6, 0),              # phase 0, y already clean: no-op, counter still advances
    ((3, 1), (0, 1), None, None),        # phase 0, move "none"
    ((0, 1), (1, 3), "N", 1),            # phase 1, both, x at the top level N
    ((1, 5), (1, 2), 2, None),           # phase 0, x only
)


def tick_case(batch: int, channels: int, size: int, levels: int = 12, eps_dtype=torch.float32,
              seed: int = 0, device: str = "cpu") -> dict:
    """Inputs of `ddpm_tick` (keyword dict, fresh random values) for `batch` members whose kinds
    cycle through KINDS in a random order; coefs (3, levels + 1) random positive, σ_1 = 0."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(max(batch, len(KINDS)), generator=g)
    kinds = [KINDS[int(i) % len(KINDS)] for i in order]

    def level(spec):
        if spec == "N":
            return levels
        return int(torch.randint(2, levels + 1, (), generator=g)) if spec is None else spec

    frame = (batch, channels, size, size)
    coefs = 0.5 + torch.rand(3, levels + 1, generator=g)
    coefs[2, 1] = 0.0
    case = {
        "x": torch.randn(frame, generator=g), "y": torch.randn(frame, generator=g),
        "eps_x": torch.randn(frame, generator=g).to(eps_dtype),
        "eps_y": torch.randn(frame, generator=g).to(eps_dtype),
        "n_x": torch.tensor([level(k[2]) for k in kinds[:batch]], dtype=torch.int32),
        "n_y": torch.tensor([level(k[3]) for k in kinds[:batch]], dtype=torch.int32),
        "moves": torch.tensor([k[1] for k in kinds[:batch]], dtype=torch.int32).reshape(batch, 2),
        "counts": torch.tensor([k[0] for k in kinds[:batch]], dtype=torch.int32).reshape(batch, 2),
        "member": torch.randint(0, 2**40, (batch,), generator=g),
        "step": torch.randint(0, 2**31 - 1, (batch,), generator=g, dtype=torch.int32),
        "seed": int(torch.randint(0, 2**32, (), generator=g)), "coefs": coefs,
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def moving(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) bools: which members' x and y this tick moves (decided from the counters by hand)."""
    counts, moves = case["counts"].cpu(), case["moves"].cpu()
    phase = torch.where(counts[:, 0] > 0, 0, 1)
    active = counts.gather(1, phase[:, None])[:, 0] > 0
    move = torch.where(active, moves.gather(1, phase[:, None])[:, 0], 0)
    return ((move & 1) > 0) & (case["n_x"].cpu() > 0), ((move & 2) > 0) & (case["n_y"].cpu() > 0)


def poison_unread(case: dict) -> None:
    """NaN into ε̂ of every frame the tick must not move: reading it would show in the result."""
    move_x, move_y = moving(case)
    case["eps_x"][~move_x.to(case["eps_x"].device)] = float("nan")
    case["eps_y"][~move_y.to(case["eps_y"].device)] = float("nan")


def clone(case: dict, dtype: torch.dtype | None = None) -> dict:
    """A deep copy; floating tensors converted to `dtype` if given (the float64 oracle)."""
    def copy(v):
        if not isinstance(v, torch.Tensor):
            return v
        return v.to(dtype, copy=True) if dtype is not None and v.is_floating_point() else v.clone()

    return {k: copy(v) for k, v in case.items()}
