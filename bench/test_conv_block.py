"""The U-Net residual block: fused Triton convs vs the torch reference, at the paper's 64² and 32²
levels.

Cases (the `paper` network's widths, docs/method.md §Network): level 0 (64², 128 ch) and level 1
(32², 256 ch), each as an encoder block (C → C, identity shortcut, no level embeddings) and a
refiner decoder block reading [h, skip] (C + C → C, 1×1 shortcut) shifted by the two heads'
level embeddings (N + 1 = 1001 wide). Implementations of ops.conv_block.residual_block:

    triton    two fused convs (circular loads, pre-GELU, bias, shifts + GELU, residual, split
              input)                                                                    GPU only
    torch     the reference, NCHW: cat, GELU, pad, conv (cuDNN on a GPU), shift add, GELU, add —
              one kernel each
    torch_cl  the same chain on channels_last tensors (cuDNN's preferred tensor-core layout)

extra_info: FLOPs (the 3×3 convs, the 1×1 shortcut and the embedding → shift linear maps), the
GELU evaluations the block defines (pre-activation of both convs' inputs, one after each shift;
the fused kernel evaluates its pre-GELU on every loaded input tile, i.e. up to
9·⌈C_out/BLOCK_N⌉ times per input element, in registers), the bytes the implementation moves
under a simple model (each op reads its inputs and writes its output once; weights once per
op); the run's summary prints the GFLOP/s and GB/s, to set against the roofline.
Run: `pytest bench/test_conv_block.py --benchmark-only` (CPU: torch paths, float32, batch 4;
GPU: every implementation in float32 and bfloat16, batch 64).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import pytest
import torch

from sns_engine.models.unet import ResidualBlock
from sns_engine.ops.conv_block import residual_block

from .cases import DTYPE_NAMES, GPU, HAS_CUDA, check_close, describe_case, needs_gpu

EMBEDDING_WIDTH = 1001       # the paper refiner's level embeddings: N + 1 for N = 1000
GPU_BATCH = 64 if HAS_CUDA else 1   # 1 on a dry run (bench/cases.py): Triton's interpreter is slow
CHECKED = 2                  # samples compared with the float64 CPU reference before timing
# within this × max |reference|: TF32 convs (cuDNN's default) in float32; bfloat16 roundings
CHECK_TOL = {torch.float32: 5e-3, torch.bfloat16: 3e-2}


class Case(NamedTuple):
    name: str
    grid: int
    c_x: int                 # channels of x
    c_skip: int              # channels of the skip (0: none)
    c_out: int
    embeddings: int          # level embeddings shifting each conv


CASES = [Case("l0_enc", 64, 128, 0, 128, 0), Case("l0_dec", 64, 128, 128, 128, 2),
         Case("l1_enc", 32, 256, 0, 256, 0), Case("l1_dec", 32, 256, 256, 256, 2)]
IDS = [c.name for c in CASES]


def cost(batch: int, case: Case, fused: bool) -> tuple[int, int, int]:
    """(FLOPs, GELU evaluations, elements moved) of one residual block under the model in the
    module docstring."""
    pixels, padded = batch * case.grid**2, batch * (case.grid + 2) ** 2
    c_in, c_out = case.c_x + case.c_skip, case.c_out
    conv_weights = 9 * c_in * c_out + 9 * c_out * c_out
    has_1x1 = c_in != c_out
    act = pixels * c_out                            # one activation map of the output width
    shifts = 2 * case.embeddings                    # shift vectors (B, C_out): per conv, per embedding
    flops = 2 * pixels * (conv_weights + (c_in * c_out if has_1x1 else 0)) \
        + shifts * 2 * batch * EMBEDDING_WIDTH * c_out
    gelus = pixels * c_in + act + shifts * act
    shortcut = pixels * c_in + act if has_1x1 else 0
    maps = shifts * (batch * EMBEDDING_WIDTH + EMBEDDING_WIDTH * c_out + c_out + batch * c_out)
    cat = 2 * pixels * c_in if case.c_skip else 0
    if fused:   # conv1: x, skip, shifts → h; conv2: h, shifts, residual → out; GELUs in registers
        moved = pixels * c_in + act + 3 * act + conv_weights + shifts * batch * c_out + shortcut
        if case.c_skip:     # split 1×1: a second partial map and an add; identity: the cat
            moved += act + 3 * act if has_1x1 else cat
        return flops, gelus, moved + maps
    pre_gelus = 2 * pixels * c_in + 2 * act
    pads = pixels * c_in + padded * c_in + act + padded * c_out
    convs = padded * c_in + act + padded * c_out + act + conv_weights
    shift_gelus = shifts * (2 * act + batch * c_out + 2 * act)   # h + s[:, :, None, None], GELU
    add = 3 * act
    return flops, gelus, cat + pre_gelus + pads + convs + shift_gelus + add + shortcut + maps


def _setup(case: Case, batch: int, dtype: torch.dtype, device: str, channels_last: bool):
    torch.manual_seed(0)
    block = ResidualBlock(case.c_x + case.c_skip, case.c_out, case.embeddings,
                          EMBEDDING_WIDTH).to(device, dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, case.c_x, case.grid, case.grid, device=device, dtype=dtype)
    skip = (torch.randn(batch, case.c_skip, case.grid, case.grid, device=device, dtype=dtype)
            if case.c_skip else None)
    x, skip = (None if t is None else t.contiguous(memory_format=layout) for t in (x, skip))
    embeddings = tuple(torch.randn(batch, EMBEDDING_WIDTH, device=device, dtype=dtype)
                       for _ in range(case.embeddings))
    return block, x, skip, embeddings


def _run(benchmark, case: Case, impl: str, batch: int, dtype: torch.dtype, device: str,
         rounds: int):
    block, x, skip, embeddings = _setup(case, batch, dtype, device, channels_last=impl != "torch")
    backend = "triton" if impl == "triton" else "torch"

    def call():
        with torch.inference_mode():
            out = residual_block(block, x, skip, embeddings, backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    flops, gelus, moved = cost(batch, case, fused=impl == "triton")
    describe_case(benchmark, "conv_block", impl, device, batch, case.name, DTYPE_NAMES[dtype],
                  flops=flops, bytes=moved * x.element_size())
    if device != "cpu" or backend == "triton":   # every GPU path, against float64 on the CPU
        wide = [None if t is None else t[:CHECKED].cpu().double() for t in (x, skip)]
        want = residual_block(copy.deepcopy(block).cpu().double(), *wide,
                              tuple(e[:CHECKED].cpu().double() for e in embeddings), "torch")
        check_close(call()[:CHECKED], want, CHECK_TOL[dtype], benchmark.name)
    benchmark.extra_info.update(gelus=gelus, batch=batch, dtype=str(dtype).removeprefix("torch."))
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["torch", "torch_cl"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_residual_block_cpu(benchmark, case, impl):
    _run(benchmark, case, impl, batch=4, dtype=torch.float32, device="cpu", rounds=5)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("impl", ["triton", "torch", "torch_cl"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_residual_block_gpu(benchmark, case, impl, dtype):
    _run(benchmark, case, impl, batch=GPU_BATCH, dtype=dtype, device=GPU, rounds=20)
