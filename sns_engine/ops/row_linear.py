"""A linear layer computed row by row, so a row's result never depends on the batch around it.

    row_linear(x, weight, bias)[b] = x[b] · weightᵀ + bias      for every row b, as F.linear

F.linear's GEMM picks its kernel by the number of rows: at one or two rows (a walk tick of one
member) a row's outputs differ in the last bits from the same row in a batch of sixteen. Here
every row is its own (1 × K) · (K × N) product of one batched GEMM (`torch.baddbmm`), the same
kernel whatever the batch, so a member's level logits, level embeddings and shifts (the small
linears of the U-Net's CPU fast path and the level heads' argmax) are the same bits in any batch.
The U-Net's convs are batch-invariant on oneDNN already (models.unet_cpu), so a member's
trajectory does not depend on how its walk's ticks are packed or its members split (threads=,
processes=). It costs ≈ 1 % of a refiner forward.
"""

from __future__ import annotations

import torch


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """x (B, K) @ weight (N, K)ᵀ + bias (N,) as (B, N), row by row (module docstring)."""
    rows, (outputs, inputs) = x.shape[0], weight.shape
    if x.ndim != 2 or x.shape[1] != inputs:
        raise ValueError(f"row_linear takes x of shape (B, {inputs}) for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(x.shape)}")
    weights = weight.t().expand(rows, inputs, outputs)
    if bias is None:
        return torch.bmm(x[:, None], weights)[:, 0]
    return torch.baddbmm(bias.expand(rows, 1, outputs), x[:, None], weights)[:, 0]
