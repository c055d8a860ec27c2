"""Argmax of a level head's last linear layer: torch reference + dispatch to Triton / CUDA.

    idx[b]   = argmax_k  features[b] · weight[k] + bias[k]          ties → the lowest k
    p_max[b] = softmax(logits[b])[idx[b]] = 1 / Σ_k exp(logits[b, k] − max_k logits[b, k])

The kernels never write the (B, K) logits; the reference here does (it is the CPU path and the
oracle). Logits are assumed finite.
"""

from __future__ import annotations

import torch

from sns_engine.kernels import check_level_argmax
from sns_engine.ops.dispatch import implementation, resolve_backend
from sns_engine.ops.row_linear import row_linear


def level_argmax_reference(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           return_max_prob: bool = False):
    """The op in plain torch: float64 if any input is float64 (the tests' oracle), else float32
    (what `level_argmax` takes: float32 or bfloat16, so p_max is float32 on every backend)."""
    wide = torch.float64 in (features.dtype, weight.dtype, bias.dtype)
    dtype = torch.float64 if wide else torch.float32
    logits = row_linear(features.to(dtype), weight.to(dtype), bias.to(dtype))  # batch-invariant
    idx = logits.argmax(dim=1)  # torch returns the first maximal index
    if not return_max_prob:
        return idx
    p_max = torch.exp(logits.amax(dim=1) - torch.logsumexp(logits, dim=1))
    return idx, p_max


def level_argmax(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 return_max_prob: bool = False, backend: str | None = "auto"):
    """idx (B,) int64 [and p_max (B,) float32] of features (B, F) @ weight (K, F)ᵀ + bias (K,).

    Inputs float32 or bfloat16, contiguous, on one device. backend as in ops.dispatch."""
    which = resolve_backend(backend, features.device)
    check_level_argmax("level_argmax", features, weight, bias)
    return implementation("level_argmax", which)(features, weight, bias, return_max_prob)
