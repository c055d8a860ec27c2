"""Counter-based Gaussian noise: Philox4x32-10 + Box–Muller, keyed by member, never by slot.

Every random number of a rollout is a pure function of

    key     = (seed, member id)                          two uint32 words (each taken mod 2³²)
    counter = (pixel index, level, physical step, stream) four uint32 words

so a member's noise is the same whatever batch, slot or backend it runs in. The pixel index of
element (c, h, w) of a (C, H, W) frame is c·H·W + h·W + w. Streams separate the four uses:

    STREAM_X = 0           reverse-step noise of x      STREAM_RENOISE_X = 2   re-noise of x
    STREAM_Y = 1           reverse-step noise of y      STREAM_RENOISE_Y = 3   re-noise of y

Philox4x32-10 (Salmon et al. 2011, Random123): ten rounds of

    (c0, c1, c2, c3) ← (hi(M1·c2) ⊕ c1 ⊕ k0, lo(M1·c2), hi(M0·c0) ⊕ c3 ⊕ k1, lo(M0·c0))

with the key bumped by (W0, W1) between rounds. One normal per pixel, Box–Muller on the first
two output words w0, w1, using their top 24 bits so every uniform is exact in float32 and all
backends (torch, Triton, CUDA) see bit-identical uniforms:

    u1 = (⌊w0 / 2⁸⌋ + 1) · 2⁻²⁴  ∈ (0, 1]       (never 0, so log u1 is finite)
    u2 = ⌊w1 / 2⁸⌋ · 2⁻²⁴ − ½    ∈ [−½, ½)      (exact)
    z  = √(−2 ln u1) · cos(TWO_PI_F32 · u2)

TWO_PI_F32 is 2π rounded to float32. Tails are cut at |z| ≤ √(48 ln 2) ≈ 5.77 (probability
≈ 8·10⁻⁹). Backends differ only by the last-ulp rounding of log and cos (≈ 1e-6).

The torch code here is exact uint32 arithmetic in int64 tensors: a 32×32 → 64-bit product is
one wrapping int64 multiply whose bits are the unsigned product's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

STREAM_X, STREAM_Y, STREAM_RENOISE_X, STREAM_RENOISE_Y = 0, 1, 2, 3

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57      # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85      # key bumps (golden ratio, √3 − 1)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 2.0**-24                           # 24-bit uniforms
TWO_PI_F32 = float(np.float32(2 * math.pi))
CHUNK = 2**16                                      # elements per block of `normal`


def _mulhilo(m: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product m·b, for a constant m < 2³², b (int64) < 2³².

    The int64 product wraps modulo 2⁶⁴ (two's complement, on every torch backend), so its bit
    pattern is exactly the unsigned product; masking after the shift undoes the sign extension."""
    prod = b * m
    return (prod >> 32).bitwise_and_(MASK32), prod.bitwise_and_(MASK32)


Word = torch.Tensor | int


def philox4x32_10(counter: tuple[torch.Tensor, Word, torch.Tensor, Word],
                  key: tuple[Word, Word]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of four counter words and two key words: int64 tensors holding uint32 values
    (broadcastable) or Python ints in [0, 2³²) (not c0, c2); returns the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def check_seed(seed: int) -> int:
    """The seed as one uint32 key word; refuses values that do not fit."""
    if not 0 <= int(seed) <= MASK32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}; reduce it mod 2**32")
    return int(seed)


def _per_member(value: torch.Tensor | int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A (B,) or scalar key/counter input as a (B, 1) int64 column of uint32 words (a Python int
    is filled in on the device: no host-to-device copy, so CUDA graph capture works)."""
    if like.ndim != 1:
        raise ValueError(f"member must be a (B,) id tensor, got shape {tuple(like.shape)}")
    if not isinstance(value, torch.Tensor):
        return torch.full((like.shape[0], 1), int(value) & MASK32, device=like.device)
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != like.shape[0]):
        raise ValueError(f"{name} has shape {tuple(value.shape)} but member has "
                         f"{tuple(like.shape)}; pass one {name} per member or a scalar")
    return (value.long() & MASK32).reshape(-1, 1).expand(like.shape[0], 1)


def philox_words(seed: int, member: torch.Tensor, step: torch.Tensor | int,
                 level: torch.Tensor | int, stream: int, numel: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two Philox output words (w0, w1), each (B, numel) int64 in [0, 2³²), for pixels
    0..numel−1 of every member (key = (seed, member), counter = (pixel, level, step, stream))."""
    key = (check_seed(seed), _per_member(member, member, "member"))
    pixel = torch.arange(numel, dtype=torch.long, device=member.device).reshape(1, -1)
    counter = (pixel, _per_member(level, member, "level"), _per_member(step, member, "step"),
               int(stream) & MASK32)
    w0, w1, _, _ = philox4x32_10(counter, key)
    return w0.expand(member.shape[0], numel), w1.expand(member.shape[0], numel)


def box_muller(w0: torch.Tensor, w1: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One standard normal per pair of uint32 words (int64 tensors), as in the module docstring."""
    u1 = ((w0 >> 8) + 1).to(dtype) * UNIFORM_SCALE
    u2 = (w1 >> 8).to(dtype) * UNIFORM_SCALE - 0.5
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(TWO_PI_F32 * u2)


def normal(seed: int, member: torch.Tensor, step: torch.Tensor | int, level: torch.Tensor | int,
           stream: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals (B, *shape) for members (B,) at their step and level, on member's device.

    step and level are (B,) tensors or scalars; `shape` is one frame's (C, H, W) (any shape works:
    pixels are numbered in row-major order). float32 or float64 (the float64 oracle uses the same
    uniforms, only log and cos are more precise)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"normal dtype must be float32 or float64, got {dtype}")
    numel = math.prod(shape)
    out = torch.empty(member.shape[0], numel, dtype=dtype, device=member.device)
    rows = max(1, CHUNK // max(numel, 1))  # bounds the int64 temporaries (cache-sized blocks)
    step, level = (_per_member(v, member, name)[:, 0] for v, name in ((step, "step"),
                                                                     (level, "level")))
    for r in range(0, member.shape[0], rows):
        part = slice(r, r + rows)
        w0, w1 = philox_words(seed, member[part], step[part], level[part], stream, numel)
        out[part] = box_muller(w0, w1, dtype)
    return out.reshape(member.shape[0], *shape)
