"""Fused argmax of a level head's last linear layer (the spec: `sns_engine.ops.level_argmax`).

idx[b] = argmax_k (features[b] · weight[k] + bias[k]) without writing the (B, K) logits: each
program takes BLOCK_B rows, walks K in tiles of BLOCK_K (each tile a float32 tl.dot over F in
BLOCK_F slices) and keeps per row a running max, its index and, if asked, a running
Σ exp(logit − max), so p_max = 1 / Σ at the end. Ties go to the lowest index (strict > across
tiles, leftmost within a tile). Logits are assumed finite.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import check_level_argmax, check_runnable


@triton.jit
def _level_argmax_kernel(f_ptr, w_ptr, b_ptr, idx_ptr, p_ptr, rows, classes, width,
                         WANT_PROB: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_F: tl.constexpr):
    row = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = row < rows
    best = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_B,), tl.int32)
    total = tl.zeros((BLOCK_B,), tl.float32)
    for k0 in tl.range(0, classes, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < classes
        acc = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
        for f0 in tl.range(0, width, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_ok = f < width
            a = tl.load(f_ptr + row[:, None].to(tl.int64) * width + f[None, :],
                        mask=row_ok[:, None] & f_ok[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptr + k[:, None].to(tl.int64) * width + f[None, :],
                        mask=k_ok[:, None] & f_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(a, tl.trans(w), input_precision="ieee")
        bias = tl.load(b_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        logits = tl.where(k_ok[None, :], acc + bias[None, :], float("-inf"))
        tile_max = tl.max(logits, axis=1)
        tile_idx = tl.argmax(logits, axis=1, tie_break_left=True)
        best_idx = tl.where(tile_max > best, k0 + tile_idx, best_idx)
        new_best = tl.maximum(best, tile_max)
        if WANT_PROB:
            total = total * tl.exp(best - new_best) + tl.sum(tl.exp(logits - new_best[:, None]), 1)
        best = new_best
    tl.store(idx_ptr + row, best_idx.to(tl.int64), mask=row_ok)
    if WANT_PROB:
        tl.store(p_ptr + row, 1.0 / total, mask=row_ok)


def level_argmax(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 return_max_prob: bool = False, block_b: int = 16, block_k: int = 64,
                 block_f: int = 64):
    """(idx (B,) int64[, p_max (B,) float32]) of features (B, F) @ weight (K, F)ᵀ + bias (K,)."""
    check_level_argmax("level_argmax", features, weight, bias)
    check_runnable("level_argmax", features)
    return launch_level_argmax(features, weight, bias, return_max_prob, block_b, block_k, block_f)


def launch_level_argmax(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        return_max_prob: bool = False, block_b: int = 16, block_k: int = 64,
                        block_f: int = 64):
    """`level_argmax` on inputs already checked (what `sns_engine.ops.level_argmax` dispatches
    to)."""
    rows, width = features.shape
    idx = torch.empty(rows, dtype=torch.int64, device=features.device)
    p_max = torch.empty(rows if return_max_prob else 0, device=features.device)
    if rows:
        grid = (triton.cdiv(rows, block_b),)
        _level_argmax_kernel[grid](features, weight, bias, idx, p_max if return_max_prob else idx,
                                   rows, weight.shape[0], width, WANT_PROB=return_max_prob,
                                   BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_F=block_f)
    return (idx, p_max) if return_max_prob else idx
