"""The refine tick and the re-noise as Triton kernels (the spec: `sns_engine.ops.update`).

Grid design: one program per member, looping over its pixels in blocks. A member's counters
(levels, phase counts) are read once at the start and written once at the end by the same
program, so the update is race-free without a second launch or atomics; members are independent.
Each tick moves ~5 float32 words per pixel and frame (x, ε̂ read; x written; noise made in
registers), so for the engine's batches (B ≥ ~100 members of 64² pixels) B programs fill the GPU;
a smaller batch is a few microseconds either way, dominated by the launch (or graph replay).

Per member: the active phase is 0 while counts[0] > 0, else 1 while counts[1] > 0, else the
member is idle (nothing is read or written but its counters). A move on x (code bit 1) and/or y
(bit 2) applies  frame ← c0[n]·frame − c1[n]·ε̂ + σ[n]·z  with z from stream 0 (x) or 1 (y) keyed
by level n, then n −= 1; a frame already at level 0 is left as it is. Levels above N read NaN
coefficients, so a bad level shows up as a non-finite frame rather than a memory fault.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import check_renoise, check_runnable, check_tick
from .rng import normal

STREAM_X: tl.constexpr = tl.constexpr(0)
STREAM_Y: tl.constexpr = tl.constexpr(1)
MAX_BLOCK = 1024


@triton.jit
def _update_frame(frame_ptr, eps_ptr, numel, a, c, s, seed, member, step, level, stream,
                  HAS_EPS: tl.constexpr, BLOCK: tl.constexpr):
    """frame ← a·frame − c·ε̂ + s·z over one member's `numel` pixels (ε̂ term only if HAS_EPS)."""
    for start in tl.range(0, numel, BLOCK):
        pixel = start + tl.arange(0, BLOCK)
        mask = pixel < numel
        value = a * tl.load(frame_ptr + pixel, mask=mask)
        if HAS_EPS:
            value -= c * tl.load(eps_ptr + pixel, mask=mask).to(tl.float32)
        value += s * normal(seed, member, step, level, stream, pixel)
        tl.store(frame_ptr + pixel, value, mask=mask)


@triton.jit
def _coef(table_ptr, level, levels):
    """table[level], NaN for a level outside [0, levels)."""
    return tl.load(table_ptr + level, mask=(level >= 0) & (level < levels), other=float("nan"))


@triton.jit
def _reverse_if_moving(frame_ptr, eps_ptr, n_ptr, moves, bit, coef_ptr, levels, seed, member,
                       step, stream, numel, BLOCK: tl.constexpr):
    n = tl.load(n_ptr)
    if ((moves & bit) != 0) & (n > 0):
        _update_frame(frame_ptr, eps_ptr, numel, _coef(coef_ptr, n, levels),
                      _coef(coef_ptr + levels, n, levels), _coef(coef_ptr + 2 * levels, n, levels),
                      seed, member, step, n, stream, True, BLOCK)
        tl.store(n_ptr, n - 1)


@triton.jit
def _ddpm_tick_kernel(x_ptr, y_ptr, eps_x_ptr, eps_y_ptr, n_x_ptr, n_y_ptr, moves_ptr, counts_ptr,
                      member_ptr, step_ptr, coef_ptr, seed, numel, levels, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    count0 = tl.load(counts_ptr + 2 * b)
    count1 = tl.load(counts_ptr + 2 * b + 1)
    phase = tl.where(count0 > 0, 0, 1)
    count = tl.where(count0 > 0, count0, count1)
    if count > 0:
        moves = tl.load(moves_ptr + 2 * b + phase)
        member = tl.load(member_ptr + b)
        step = tl.load(step_ptr + b)
        row = b.to(tl.int64) * numel
        _reverse_if_moving(x_ptr + row, eps_x_ptr + row, n_x_ptr + b, moves, 1, coef_ptr, levels,
                           seed, member, step, STREAM_X, numel, BLOCK)
        _reverse_if_moving(y_ptr + row, eps_y_ptr + row, n_y_ptr + b, moves, 2, coef_ptr, levels,
                           seed, member, step, STREAM_Y, numel, BLOCK)
        tl.store(counts_ptr + 2 * b + phase, count - 1)


@triton.jit
def _renoise_kernel(frame_ptr, level_ptr, member_ptr, step_ptr, sqrt_ab_ptr, sqrt_1mab_ptr, seed,
                    stream, numel, levels, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(level_ptr + b)
    if n > 0:
        row = b.to(tl.int64) * numel
        _update_frame(frame_ptr + row, frame_ptr + row, numel, _coef(sqrt_ab_ptr, n, levels), 0.0,
                      _coef(sqrt_1mab_ptr, n, levels), seed, tl.load(member_ptr + b),
                      tl.load(step_ptr + b), n, stream, False, BLOCK)


def _block(numel: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(numel))


def ddpm_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed: int,
              coefs: torch.Tensor) -> None:
    """One refine tick for the whole batch, in place (x, y, n_x, n_y, counts); see the module
    docstring and `sns_engine.ops.update.ddpm_tick` for the arguments."""
    check_tick("ddpm_tick", x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, coefs)
    check_runnable("ddpm_tick", x)
    launch_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed, coefs)


def launch_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed: int,
                coefs: torch.Tensor) -> None:
    """`ddpm_tick` on inputs already checked (what `sns_engine.ops.update` dispatches to)."""
    if x.shape[0] == 0:
        return
    numel = x[0].numel()
    _ddpm_tick_kernel[(x.shape[0],)](x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step,
                                     coefs, seed & 0xFFFFFFFF, numel, coefs.shape[1],
                                     BLOCK=_block(numel))


def renoise(frame, level, member, step, seed: int, sqrt_ab, sqrt_1mab, stream: int) -> None:
    """frame ← √ᾱ_n·frame + √(1−ᾱ_n)·z in place for members with level n > 0."""
    check_renoise("renoise", frame, level, member, step, sqrt_ab, sqrt_1mab)
    check_runnable("renoise", frame)
    launch_renoise(frame, level, member, step, seed, sqrt_ab, sqrt_1mab, stream)


def launch_renoise(frame, level, member, step, seed: int, sqrt_ab, sqrt_1mab, stream: int) -> None:
    """`renoise` on inputs already checked (what `sns_engine.ops.update` dispatches to)."""
    if frame.shape[0] == 0:
        return
    numel = frame[0].numel()
    _renoise_kernel[(frame.shape[0],)](frame, level, member, step, sqrt_ab, sqrt_1mab,
                                       seed & 0xFFFFFFFF, stream & 0xFFFFFFFF, numel,
                                       sqrt_ab.shape[0], BLOCK=_block(numel))
