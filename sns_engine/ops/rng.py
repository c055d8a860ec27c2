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

The torch code here is exact uint32 arithmetic in int64 tensors (`philox4x32_10`).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

STREAM_X, STREAM_Y, STREAM_RENOISE_X, STREAM_RENOISE_Y = 0, 1, 2, 3

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57      # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85      # key bumps (golden ratio, √3 − 1)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 2.0**-24                           # 24-bit uniforms
TWO_PI_F32 = float(np.float32(2 * math.pi))
CHUNK = 2**15                                      # elements per block of `normal` (its words in L2)


Word = torch.Tensor | int


def philox4x32_10(counter: tuple[torch.Tensor, Word, torch.Tensor, Word],
                  key: tuple[Word, Word], work: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of four counter words and two key words: int64 tensors holding uint32 values
    (broadcastable) or Python ints in [0, 2³²) (not c0, c2); returns the four output words, each
    of the broadcast shape.

    A 32×32 → 64-bit product is one wrapping int64 multiply whose bits are the unsigned
    product's: hi = product >> 32 (its sign extension masked off), lo = its low half. Every op
    writes into six word-sized tensors (`work`: (6, *shape) int64, else new memory): no tensor is
    allocated per op, so no page of memory is faulted in anew. A round's lo words keep the hi
    bits above them: they are only ever xor-ed into a word that is masked next, and the outputs
    are masked at the end."""
    shape = torch.broadcast_shapes(*(w.shape for w in (*counter, *key) if isinstance(w, torch.Tensor)))
    device = next(w.device for w in counter if isinstance(w, torch.Tensor))
    if work is None:
        work = torch.empty(6, *shape, dtype=torch.long, device=device)
    c0, c1, c2, c3, p0, p1 = work.unbind(0)
    for word, value in zip((c0, c1, c2, c3), counter, strict=True):
        word.copy_(value) if isinstance(value, torch.Tensor) else word.fill_(value)
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        torch.mul(c0, PHILOX_M0, out=p0)
        torch.mul(c2, PHILOX_M1, out=p1)
        torch.bitwise_right_shift(p1, 32, out=c0).bitwise_xor_(c1).bitwise_xor_(k0).bitwise_and_(MASK32)
        torch.bitwise_right_shift(p0, 32, out=c2).bitwise_xor_(c3).bitwise_xor_(k1).bitwise_and_(MASK32)
        c1, p1, c3, p0 = p1, c1, p0, c3  # the lo words: the products, where they are
    return c0, c1.bitwise_and_(MASK32), c2, c3.bitwise_and_(MASK32)


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
                 level: torch.Tensor | int, stream: int, numel: int,
                 work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two Philox output words (w0, w1), each (B, numel) int64 in [0, 2³²), for pixels
    0..numel−1 of every member (key = (seed, member), counter = (pixel, level, step, stream)), in
    `work` ((6, B, numel) int64: `philox4x32_10`) if given."""
    key = (check_seed(seed), _per_member(member, member, "member"))
    pixel = torch.arange(numel, dtype=torch.long, device=member.device).reshape(1, -1)
    counter = (pixel.expand(member.shape[0], numel), _per_member(level, member, "level"),
               _per_member(step, member, "step"), int(stream) & MASK32)
    w0, w1, _, _ = philox4x32_10(counter, key, work)
    return w0, w1


def box_muller(w0: torch.Tensor, w1: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One standard normal per pair of uint32 words (int64 tensors), as in the module docstring."""
    out = torch.empty(w0.shape, dtype=dtype, device=w0.device)
    return _box_muller_into(out, torch.empty_like(out), w0.clone(), w1.clone())


def _box_muller_into(out: torch.Tensor, spare: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor
                     ) -> torch.Tensor:
    """`box_muller(w0, w1, out.dtype)` written into `out`, through `spare` (a tensor like it) and
    the words themselves, which it overwrites: no memory of its own."""
    torch.mul(w0.bitwise_right_shift_(8).add_(1), UNIFORM_SCALE, out=out)   # u1, exact
    torch.mul(w1.bitwise_right_shift_(8), UNIFORM_SCALE, out=spare).sub_(0.5)  # u2, exact
    return out.log_().mul_(-2.0).sqrt_().mul_(spare.mul_(TWO_PI_F32).cos_())


class _Workspace(threading.local):
    """This thread's memory for `normal` on the CPU, one flat tensor per dtype, kept from call to
    call (grown as needed): its pages stay mapped, where int64 temporaries of a block's size
    were each mapped and faulted in anew (3 800 page faults per 64 members' draw)."""

    def __init__(self) -> None:
        self.memory: dict[torch.dtype, torch.Tensor] = {}

    def get(self, dtype: torch.dtype, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        memory = self.memory.get(dtype)
        if memory is None or memory.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: writable in place in any mode
                memory = self.memory[dtype] = torch.empty(numel, dtype=dtype)
        return memory[:numel].view(shape)


_WORKSPACE = _Workspace()


def normal(seed: int, member: torch.Tensor, step: torch.Tensor | int, level: torch.Tensor | int,
           stream: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals (B, *shape) for members (B,) at their step and level, on member's device.

    step and level are (B,) tensors or scalars; `shape` is one frame's (C, H, W) (any shape works:
    pixels are numbered in row-major order). float32 or float64 (the float64 oracle uses the same
    uniforms, only log and cos are more precise). Computed in blocks of members whose words fit
    in cache, on the CPU in this thread's `_Workspace`."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"normal dtype must be float32 or float64, got {dtype}")
    numel = math.prod(shape)
    out = torch.empty(member.shape[0], numel, dtype=dtype, device=member.device)
    rows = max(1, CHUNK // max(numel, 1))
    step, level = (_per_member(v, member, name)[:, 0] for v, name in ((step, "step"),
                                                                     (level, "level")))
    for r in range(0, member.shape[0], rows):
        part = slice(r, r + rows)
        size = out[part].shape[0]
        if member.device.type == "cpu":
            work, spare = _WORKSPACE.get(torch.long, 6, size, numel), _WORKSPACE.get(dtype, size, numel)
        else:  # the caching allocator keeps device memory; a CUDA graph's must be its own
            work, spare = None, torch.empty(size, numel, dtype=dtype, device=member.device)
        w0, w1 = philox_words(seed, member[part], step[part], level[part], stream, numel, work)
        _box_muller_into(out[part], spare, w0, w1)
    return out.reshape(member.shape[0], *shape)
