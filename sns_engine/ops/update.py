"""The fused refine tick and re-noise: torch reference + dispatch to Triton / CUDA.

Per-member state lives on the device: levels n_x, n_y (B,) int32, and the member's path compiled
into two phases (diffusion.paths): `moves` (B, 2) int32 codes 0 none, 1 x, 2 y, 3 both (bit 1 is
x, bit 2 is y), and `counts` (B, 2) int32 moves left per phase. The active phase is 0 while
counts[:, 0] > 0, else 1 while counts[:, 1] > 0, else the member is idle. One tick, given ε̂ for
both frames:

    for each frame f ∈ {x, y} that the active move contains, at level n = n_f > 0:
        f ← c0[n]·f − c1[n]·ε̂_f + σ[n]·z,   z = rng.normal(seed, member, step, n, stream_f)
        n_f ← n − 1
    counts[active phase] −= 1

with coefs = (3, N + 1) rows [1/√α_n, β_n/(√(1−ᾱ_n)√α_n), σ_n] (schedule.recip_sqrt_alpha,
schedule.eps_coef, schedule.sigma), stream_x = 0, stream_y = 1. σ_1 = 0 makes the last step
noiseless per member; a frame already at level 0 is left unchanged (and its level stays 0);
idle members are not touched. Everything is on the device, nothing syncs with the host.
"""

from __future__ import annotations

import torch

from sns_engine.diffusion.paths import X, Y
from sns_engine.kernels import check_renoise, check_tick
from sns_engine.ops import rng
from sns_engine.ops.dispatch import implementation, resolve_backend


def active_moves(moves: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(move code of the active phase, 0 when idle; active phase index) per member."""
    in_first = counts[:, 0] > 0
    active = in_first | (counts[:, 1] > 0)
    move = torch.where(in_first, moves[:, 0], moves[:, 1])
    return torch.where(active, move, 0), torch.where(in_first, 0, 1).where(active, -1)


def _noised_update(frame: torch.Tensor, on: torch.Tensor, level: torch.Tensor, a: torch.Tensor,
                   s: torch.Tensor, seed: int, member: torch.Tensor, step: torch.Tensor,
                   stream: int, eps: torch.Tensor | None = None, c: torch.Tensor | None = None
                   ) -> None:
    """In place, for members where `on`: frame ← a[n]·frame (− c[n]·ε̂) + s[n]·z, n = level.

    On CUDA every row is computed and the result masked (no host sync: graph-capturable). On the
    CPU only the rows that move are computed: the noise is keyed by member, not by row, so the
    values are the same, and the Philox draws (the bulk of the work) are not wasted."""
    if frame.is_cuda:
        rows = slice(None)
    else:
        rows = on.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
    n = torch.where(on, level, 0).long()[rows]
    col = (-1,) + (1,) * (frame.ndim - 1)
    step = step[rows] if isinstance(step, torch.Tensor) and step.ndim else step
    z = rng.normal(seed, member[rows], step, n, stream, tuple(frame.shape[1:]), frame.dtype)
    new = a.to(frame.dtype)[n].reshape(col) * frame[rows] + s.to(frame.dtype)[n].reshape(col) * z
    if eps is not None:
        new -= c.to(frame.dtype)[n].reshape(col) * eps[rows].to(frame.dtype)
    if frame.is_cuda:
        frame.copy_(torch.where(on.reshape(col), new, frame))
    else:
        frame[rows] = new


def tick_reference(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, seed: int,
                   coefs: torch.Tensor) -> None:
    """The tick in plain torch, in the dtype of x and y (float32 on the CPU path, float64 as the
    tests' oracle); arguments as in `ddpm_tick`."""
    move, phase = active_moves(moves, counts)
    for frame, eps, n, bit, stream in ((x, eps_x, n_x, X, rng.STREAM_X),
                                       (y, eps_y, n_y, Y, rng.STREAM_Y)):
        on = ((move & bit) != 0) & (n > 0)
        _noised_update(frame, on, n, coefs[0], coefs[2], seed, member, step, stream, eps, coefs[1])
        n.sub_(on.to(n.dtype))
    for p in range(2):
        counts[:, p].sub_((phase == p).to(counts.dtype))


def renoise_reference(frame, level, member, step, seed: int, sqrt_ab, sqrt_1mab,
                      stream: int) -> None:
    """The re-noise in plain torch (in the dtype of frame); arguments as in `renoise`."""
    _noised_update(frame, level > 0, level, sqrt_ab, sqrt_1mab, seed, member, step, stream)


def ddpm_tick(x: torch.Tensor, y: torch.Tensor, eps_x: torch.Tensor, eps_y: torch.Tensor,
              n_x: torch.Tensor, n_y: torch.Tensor, moves: torch.Tensor, counts: torch.Tensor,
              member: torch.Tensor, step: torch.Tensor, seed: int, coefs: torch.Tensor,
              backend: str | None = "auto") -> None:
    """One refine tick for the whole batch, in place (see the module docstring).

    x, y (B, C, H, W) float32; eps_x, eps_y same shape, float32 or bfloat16; n_x, n_y (B,) int32;
    moves, counts (B, 2) int32; member (B,) int64; step (B,) int32; coefs (3, N + 1) float32; all
    contiguous on one device. backend: "auto", "torch", "triton" or "cuda" (ops.dispatch)."""
    which = resolve_backend(backend, x.device)
    args = (x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step)
    check_tick("ddpm_tick", *args, coefs)
    implementation("ddpm_tick", which)(*args, rng.check_seed(seed), coefs)


def renoise(frame: torch.Tensor, level: torch.Tensor, member: torch.Tensor, step: torch.Tensor,
            seed: int, sqrt_ab: torch.Tensor, sqrt_1mab: torch.Tensor, stream: int,
            backend: str | None = "auto") -> None:
    """Forward diffusion to each member's level, in place: frame ← √ᾱ_n·frame + √(1−ᾱ_n)·z for
    members with level n > 0 (others untouched), z = rng.normal(seed, member, step, n, stream).

    frame (B, C, H, W) float32; level (B,) int32; member (B,) int64; step (B,) int32; sqrt_ab,
    sqrt_1mab (N + 1,) float32 (schedule.sqrt_alpha_bar, schedule.sqrt_one_minus_alpha_bar)."""
    which = resolve_backend(backend, frame.device)
    args = (frame, level, member, step, rng.check_seed(seed), sqrt_ab, sqrt_1mab, int(stream))
    check_renoise("renoise", frame, level, member, step, sqrt_ab, sqrt_1mab)
    implementation("renoise", which)(*args)
