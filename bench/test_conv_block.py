"""The U-Net residual block: fused Triton convs vs the torch reference, at the paper's 64² and 32²
levels.

Cases (paper channel counts, DESIGN.md §3): level 0 (64², 64 ch) and level 1 (32², 128 ch), each
as an encoder block (C → C, identity shortcut) and a decoder block reading [h, skip] (C + C → C,
1×1 shortcut). Implementations of ops.conv_block.residual_block:

    triton    two fused convs (circular loads, bias, GELU, residual, split input)      GPU only
    torch     the reference, NCHW: cat, pad, conv (cuDNN on a GPU), GELU, add — one kernel each
    torch_cl  the same chain on channels_last tensors (cuDNN's preferred tensor-core layout)

extra_info: FLOPs of a call (the 3×3 convs and the 1×1 shortcut) and the bytes the implementation
moves under a simple model (each op reads its inputs and writes its output once; weights once per
conv); the run's summary prints the GFLOP/s and GB/s, to set against the roofline.
Run: `pytest bench/test_conv_block.py --benchmark-only` (CPU: torch paths, float32, batch 4;
GPU: every implementation in float32 and bfloat16, batch 64).
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.models.unet import ResidualBlock
from sns_engine.ops.conv_block import residual_block

from .cases import DTYPE_NAMES, describe_case

# (name, grid, channels of x, channels of skip, output channels)
CASES = [("l0_enc", 64, 64, 0, 64), ("l0_dec", 64, 64, 64, 64),
         ("l1_enc", 32, 128, 0, 128), ("l1_dec", 32, 128, 128, 128)]
IDS = [c[0] for c in CASES]


def cost(batch: int, grid: int, c_x: int, c_skip: int, c_out: int, fused: bool) -> tuple[int, int]:
    """(FLOPs, elements moved) of one residual block under the model in the module docstring."""
    pixels, padded = batch * grid * grid, batch * (grid + 2) ** 2
    c_in = c_x + c_skip
    conv_weights = 9 * c_in * c_out + 9 * c_out * c_out
    has_1x1 = c_in != c_out
    flops = 2 * pixels * (conv_weights + (c_in * c_out if has_1x1 else 0))
    act = pixels * c_out                            # one activation map of the output width
    shortcut = pixels * c_in + act if has_1x1 else 0
    if fused:                                       # conv1: x, skip → h; conv2: h, residual → out
        moved = pixels * c_in + act + 3 * act + conv_weights + shortcut
        if c_skip and has_1x1:                      # split 1×1: a second partial map and an add
            moved += act + 3 * act
        return flops, moved
    cat = 2 * pixels * c_in if c_skip else 0
    pads = pixels * c_in + padded * c_in + act + padded * c_out
    convs = padded * c_in + act + padded * c_out + act + conv_weights
    gelus, add = 4 * act, 3 * act
    return flops, cat + pads + convs + gelus + add + shortcut


def _setup(case, batch: int, dtype: torch.dtype, device: str, channels_last: bool):
    _, grid, c_x, c_skip, c_out = case
    torch.manual_seed(0)
    block = ResidualBlock(c_x + c_skip, c_out).to(device, dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, c_x, grid, grid, device=device, dtype=dtype)
    skip = torch.randn(batch, c_skip, grid, grid, device=device, dtype=dtype) if c_skip else None
    x, skip = (None if t is None else t.contiguous(memory_format=layout) for t in (x, skip))
    return block, x, skip


def _run(benchmark, case, impl: str, batch: int, dtype: torch.dtype, device: str, rounds: int):
    block, x, skip = _setup(case, batch, dtype, device, channels_last=impl != "torch")
    backend = "triton" if impl == "triton" else "torch"

    def call():
        with torch.inference_mode():
            out = residual_block(block, x, skip, backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    flops, moved = cost(batch, *case[1:], fused=impl == "triton")
    describe_case(benchmark, "conv_block", impl, device, batch, case[0], DTYPE_NAMES[dtype], flops=flops,
                  bytes=moved * x.element_size())
    benchmark.extra_info.update(batch=batch, dtype=str(dtype).removeprefix("torch."))
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["torch", "torch_cl"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_residual_block_cpu(benchmark, case, impl):
    _run(benchmark, case, impl, batch=4, dtype=torch.float32, device="cpu", rounds=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("impl", ["triton", "torch", "torch_cl"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_residual_block_gpu(benchmark, case, impl, dtype):
    _run(benchmark, case, impl, batch=64, dtype=dtype, device="cuda", rounds=20)
