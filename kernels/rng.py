"""Philox4x32-10 + Box–Muller as Triton device functions (the spec: `sns_engine.ops.rng`).

Key = (seed, member), counter = (pixel, level, step, stream), all uint32; one normal per pixel from
the first two output words, uniforms from their top 24 bits (exact in float32), so the words are
bit-identical to the torch reference and the normals agree to the rounding of log and cos.
`philox_normal` launches them over (members, pixels) for tests and inspection.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import check_runnable, check_tensor

PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
UNIFORM_SCALE: tl.constexpr = tl.constexpr(2.0**-24)
TWO_PI_F32: tl.constexpr = tl.constexpr(6.2831854820251465)  # 2π rounded to float32


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counter words (c0..c3) under key (k0, k1); four uint32 words."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = tl.mul(c0, PHILOX_M0, sanitize_overflow=False)  # uint32 wrap-around is the point
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = tl.mul(c2, PHILOX_M1, sanitize_overflow=False)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)  # the last bump is never used
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def box_muller(w0, w1):
    """A float32 standard normal from two uint32 words: u1 ∈ (0, 1], u2 ∈ [−½, ½), both exact."""
    u1 = ((w0 >> 8) + 1).to(tl.float32) * UNIFORM_SCALE
    u2 = (w1 >> 8).to(tl.float32) * UNIFORM_SCALE - 0.5
    return tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(u2 * TWO_PI_F32)


@triton.jit
def philox_words(seed, member, step, level, stream, pixel):
    """(w0, w1) for a block of pixel indices of one member; every argument an integer scalar or
    block, reduced to uint32."""
    zero = tl.zeros_like(pixel).to(tl.int64)  # broadcasts scalars to the block; tensor first
    c0 = pixel.to(tl.uint32)
    c1 = (zero + level).to(tl.uint32)
    c2 = (zero + step).to(tl.uint32)
    c3 = (zero + stream).to(tl.uint32)
    k0 = (zero + seed).to(tl.uint32)
    k1 = (zero + member).to(tl.uint32)
    w0, w1, _, _ = philox4x32_10(c0, c1, c2, c3, k0, k1)
    return w0, w1


@triton.jit
def normal(seed, member, step, level, stream, pixel):
    """float32 standard normals for a block of pixel indices of one member."""
    w0, w1 = philox_words(seed, member, step, level, stream, pixel)
    return box_muller(w0, w1)


@triton.jit
def _philox_normal_kernel(w0_ptr, w1_ptr, z_ptr, member_ptr, step_ptr, level_ptr, seed, stream,
                          numel, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = pixel < numel
    member = tl.load(member_ptr + row)
    step = tl.load(step_ptr + row)
    level = tl.load(level_ptr + row)
    w0, w1 = philox_words(seed, member, step, level, stream, pixel)
    out = row.to(tl.int64) * numel + pixel
    tl.store(w0_ptr + out, w0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(w1_ptr + out, w1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(z_ptr + out, box_muller(w0, w1), mask=mask)


def philox_normal(seed: int, member: torch.Tensor, step: torch.Tensor, level: torch.Tensor,
                  stream: int, numel: int, block: int = 256
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Words (w0, w1) as (B, numel) int64 in [0, 2³²) and the normals (B, numel) float32 for
    members (B,) int64 at their step and level ((B,) int32) and pixels 0..numel−1."""
    b = member.shape[0] if member.ndim == 1 else -1
    check_tensor("philox_normal", "member", member, (b,), (torch.int64,))
    check_tensor("philox_normal", "step", step, (b,), (torch.int32,), member.device)
    check_tensor("philox_normal", "level", level, (b,), (torch.int32,), member.device)
    check_runnable("philox_normal", member)
    w0 = torch.empty(b, numel, dtype=torch.int32, device=member.device)
    w1, z = torch.empty_like(w0), torch.empty(b, numel, device=member.device)
    grid = (b, triton.cdiv(numel, block))
    _philox_normal_kernel[grid](w0, w1, z, member, step, level, seed & 0xFFFFFFFF,
                                stream & 0xFFFFFFFF, numel, BLOCK=block)
    return w0.long() & 0xFFFFFFFF, w1.long() & 0xFFFFFFFF, z
