"""Fused circular 3×3 convolution (the spec: `sns_engine.ops.conv_block`).

    h[b, y, x, n] = Σ_{ky, kx, c} pre(in[b, (y+ky−1) mod H, (x+kx−1) mod W, c]) · w[ky, kx, c, n]
                    + bias[n]
    h ← GELU(h + s[b, n])   for each of the 0, 1 or 2 shifts s (B, C_out), in order
    out[b, y, x, n] = h + residual[b, y, x, n]

with in = [x, extra] along the channels, pre the exact-erf GELU (pre_gelu) or the identity.

It is an implicit GEMM over channels-last (NHWC) tensors: M = B·H·W output pixels, N = C_out,
K = 9·C_in. Each program owns a BLOCK_M × BLOCK_N output tile and walks K in one flat loop over
(tap, channel block); the periodic padding is index arithmetic on the loads (a row index y−1 < 0
wraps to H−1, y+1 = H to 0), so no padded copy is ever made. The input channels may come from two
tensors (`x` then `extra`, the decoder's [h, skip]), each with its own loop over its channels, so
the concatenation is never written. The pre-activation GELU is applied to each loaded input tile
(in float32, rounded back to the input dtype for `tl.dot`); a wrapped tap loads the wrapped pixel
itself, and masked-out elements load 0 = GELU(0), so it commutes with the padding. Accumulation
is float32 (`tl.dot`, IEEE for float32 inputs, bf16 tensor cores for bfloat16); bias, the shifts
with their GELUs and the residual add happen in registers before the single store, in the input
dtype. Channel counts need not divide the blocks (masks).
Triton's interpreter cannot `tl.dot` bfloat16 (it multiplies the raw bits, triton#11584), so
there the bf16 tiles are upcast first: the same products (a bf16 product is exact in float32),
the same float32 accumulation.

Weights are (3, 3, C_in, C_out) contiguous (`weight.permute(2, 3, 1, 0)` of a torch conv weight),
so a K-slice of the weights is a contiguous (BLOCK_K, BLOCK_N) tile.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import MAX_SHIFTS, KernelInputError, check_tensor

DTYPES = (torch.float32, torch.bfloat16)
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _configs() -> list[triton.Config]:
    """Block shapes to try on a GPU; one large shape under the interpreter (no tuning; its cost
    grows with the number of programs and loop steps, not with the tile size)."""
    if _INTERPRETING:
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64})]
    shapes = [(128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 4), (64, 128, 64, 4, 3),
              (32, 64, 64, 4, 4), (128, 128, 64, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


@triton.jit
def _gelu(v):
    """Exact (erf) GELU of a float32 tile."""
    return 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))


@triton.jit
def _accumulate(acc, src_ptr, C_src, w_ptr, c_first, C_in, C_out, b, y, x, m_ok, n, n_ok, H, W,
                PRE_GELU: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    """acc += the 3×3 circular conv of pre(NHWC `src`) (C_src channels) with weight rows
    c_first .. c_first + C_src of every tap."""
    blocks = tl.cdiv(C_src, BLOCK_K)
    for kk in tl.range(0, 9 * blocks):
        tap = kk // blocks
        c = (kk - tap * blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
        c_ok = c < C_src
        yy = y + (tap // 3 - 1)
        yy = tl.where(yy < 0, yy + H, tl.where(yy >= H, yy - H, yy))
        xx = x + (tap % 3 - 1)
        xx = tl.where(xx < 0, xx + W, tl.where(xx >= W, xx - W, xx))
        pixel = (b * H + yy) * W + xx                                        # int64
        a = tl.load(src_ptr + pixel[:, None] * C_src + c[None, :],
                    mask=m_ok[:, None] & c_ok[None, :], other=0.0)
        if PRE_GELU:
            a = _gelu(a.to(tl.float32)).to(a.dtype)
        row = tap * C_in + c_first + c
        w = tl.load(w_ptr + row[:, None] * C_out + n[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _shift_gelu(acc, shift_ptr, b, n, mask, C_out):
    """GELU(acc + shift[b, n]): each output row reads its own sample's row of the (B, C_out) shift."""
    shift = tl.load(shift_ptr + b[:, None] * C_out + n[None, :], mask=mask, other=0.0)
    return _gelu(acc + shift.to(tl.float32))


@triton.autotune(configs=_configs(), key=["C1", "C2", "C_out", "HW"])
@triton.jit
def _conv3x3_kernel(x_ptr, extra_ptr, w_ptr, bias_ptr, shift1_ptr, shift2_ptr, res_ptr, out_ptr, M,
                    H, W, HW, C1, C2, C_out, HAS_EXTRA: tl.constexpr, HAS_BIAS: tl.constexpr,
                    PRE_GELU: tl.constexpr, N_SHIFTS: tl.constexpr, HAS_RES: tl.constexpr,
                    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    n_ok = n < C_out
    b = (m // HW).to(tl.int64)
    rest = m % HW
    y = rest // W
    x = rest - y * W
    C_in = C1 + C2
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc = _accumulate(acc, x_ptr, C1, w_ptr, 0, C_in, C_out, b, y, x, m_ok, n, n_ok, H, W,
                      PRE_GELU, BLOCK_K, DOT_F32)
    if HAS_EXTRA:
        acc = _accumulate(acc, extra_ptr, C2, w_ptr, C1, C_in, C_out, b, y, x, m_ok, n, n_ok, H, W,
                          PRE_GELU, BLOCK_K, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if N_SHIFTS >= 1:
        acc = _shift_gelu(acc, shift1_ptr, b, n, mask, C_out)
    if N_SHIFTS >= 2:
        acc = _shift_gelu(acc, shift2_ptr, b, n, mask, C_out)
    offset = m.to(tl.int64)[:, None] * C_out + n[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offset, acc.to(out_ptr.dtype.element_ty), mask=mask)


def check_conv3x3(op: str, x, weight, bias, shifts, residual, extra, out) -> None:
    """Shapes, dtypes, contiguity and device of NHWC inputs and (B, C_out) shifts
    (KernelInputError otherwise)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise KernelInputError(f"{op}: x must be a (B, H, W, C) tensor, got "
                               f"{getattr(x, 'shape', type(x).__name__)}")
    batch, height, width, c1 = x.shape
    dev = x.device
    check_tensor(op, "x", x, (batch, height, width, c1), DTYPES, dev)
    c_in = c1
    if extra is not None:
        check_tensor(op, "extra", extra, (batch, height, width, None), (x.dtype,), dev)
        c_in += extra.shape[3]
    check_tensor(op, "weight", weight, (3, 3, c_in, None), (x.dtype,), dev)
    c_out = weight.shape[3]
    if bias is not None:
        check_tensor(op, "bias", bias, (c_out,), DTYPES, dev)
    if len(shifts) > MAX_SHIFTS:
        raise KernelInputError(f"{op}: at most {MAX_SHIFTS} shifts, got {len(shifts)}")
    for i, shift in enumerate(shifts):
        check_tensor(op, f"shifts[{i}]", shift, (batch, c_out), DTYPES, dev)
    if residual is not None:
        check_tensor(op, "residual", residual, (batch, height, width, c_out), DTYPES, dev)
    if out is not None:
        check_tensor(op, "out", out, (batch, height, width, c_out), (x.dtype,), dev)
    if min(batch, height, width, c1, c_out) == 0:
        raise KernelInputError(f"{op}: empty input x {tuple(x.shape)} or weight "
                               f"{tuple(weight.shape)}; every size must be ≥ 1")


def conv3x3_circular_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          pre_gelu: bool = False, shifts: tuple[torch.Tensor, ...] = (),
                          residual: torch.Tensor | None = None, extra: torch.Tensor | None = None,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """post(circular conv3×3(pre([x, extra])) + bias) + residual, all NHWC; returns `out`
    (B, H, W, C_out). pre: exact GELU if `pre_gelu`; post: h ← GELU(h + s) per shift s.

    x (B, H, W, C1) and extra (B, H, W, C2) float32 or bfloat16; weight (3, 3, C1 + C2, C_out) in
    x's dtype; bias (C_out,), each of the ≤ 2 shifts (B, C_out) and residual (B, H, W, C_out)
    float32 or bfloat16. `out` (in x's dtype) is written if given, else allocated. Every tensor
    contiguous."""
    check_conv3x3("conv3x3_circular", x, weight, bias, shifts, residual, extra, out)
    batch, height, width, c1 = x.shape
    c_out = weight.shape[3]
    if out is None:
        out = torch.empty(batch, height, width, c_out, dtype=x.dtype, device=x.device)
    rows = batch * height * width
    shift1, shift2 = (*shifts, x, x)[:2]

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]))

    _conv3x3_kernel[grid](
        x, x if extra is None else extra, weight, x if bias is None else bias, shift1, shift2,
        x if residual is None else residual, out, rows, height, width, height * width, c1,
        0 if extra is None else extra.shape[3], c_out, HAS_EXTRA=extra is not None,
        HAS_BIAS=bias is not None, PRE_GELU=bool(pre_gelu), N_SHIFTS=len(shifts),
        HAS_RES=residual is not None, DOT_F32=x.dtype == torch.float32 or _INTERPRETING)
    return out
