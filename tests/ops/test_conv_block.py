"""The fused circular 3×3 conv (pre-activation GELU, per-sample shifts with their GELUs, bias,
residual, split input) against the float64 torch reference, the residual block and a whole U-Net
with backend "triton" against "torch", periodicity, dispatch and input checks.

Triton runs in its interpreter on CPU (TRITON_INTERPRET=1, tests/conftest.py).
Runtime ≈ 45 s on one CPU core, half of it the option matrix.
"""

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sns_engine.kernels import KernelInputError
from sns_engine.kernels.conv_block import conv3x3_circular_nhwc
from sns_engine.models.unet import UNet, UNetConfig
from sns_engine.ops.conv_block import (
    block_backend,
    conv3x3_circular,
    conv3x3_reference,
    conv_backend,
    residual_block,
)
from sns_engine.ops.dispatch import BackendError

from .cases import CUDA_EXT_MISSING

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
# Against the float64 oracle fed the same (rounded) inputs. float32: only the summation order of
# ≤ 9·79 products differs (~1e-6). bfloat16: products are exact and accumulate in float32, so the
# one rounding of the output dominates: < 1 ulp = 2⁻⁷ relative (Triton's interpreter truncates
# float32 → bfloat16; a GPU rounds to nearest, half that). A wrong tap, channel, wrap, shift,
# sample or GELU placement is O(0.1–1).
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2**-7, atol=1e-4)}
# bfloat16 with pre_gelu: tl.dot reads GELU(input) rounded to bfloat16, one more rounding
# (< 2⁻⁷ relative) per product than the oracle has. Over K products of random sign with outputs
# O(1) that is ≈ 2⁻⁷/√3 · 0.65 ≈ 0.003 rms, ≈ 0.012 at most in these tests: atol 2⁻⁵.
TOL_PRE_GELU_BF16 = dict(rtol=2**-7, atol=2**-5)


def tol(dtype: torch.dtype, pre_gelu: bool) -> dict:
    return TOL_PRE_GELU_BF16 if pre_gelu and dtype == torch.bfloat16 else TOL[dtype]


def fresh(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(shape, generator=gen) * scale).to(DEVICE, dtype)


def conv_case(shape, dtype, bias=True, n_shifts=1, residual=True, seed=0) -> dict:
    """Keyword inputs of conv3x3_circular (NCHW; shifts in `dtype`, bias float32): weights scaled
    to keep outputs O(1), fresh random values, so every sample has its own shifts."""
    batch, c1, c2, c_out, height, width = shape
    g = torch.Generator().manual_seed(seed)
    return {"x": fresh(g, batch, c1, height, width, dtype=dtype),
            "extra_input": fresh(g, batch, c2, height, width, dtype=dtype) if c2 else None,
            "weight": fresh(g, c_out, c1 + c2, 3, 3, scale=(9 * (c1 + c2)) ** -0.5, dtype=dtype),
            "bias": fresh(g, c_out) if bias else None,
            "shifts": tuple(fresh(g, batch, c_out, dtype=dtype) for _ in range(n_shifts)),
            "residual": fresh(g, batch, c_out, height, width, dtype=dtype) if residual else None}


def oracle(case: dict, pre_gelu: bool) -> torch.Tensor:
    """conv3x3_reference in float64 on the case's (already rounded) values."""
    wide = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    wide["shifts"] = tuple(s.double() for s in case["shifts"])
    return conv3x3_reference(pre_gelu=pre_gelu, **wide)


def nhwc(t):
    return None if t is None else t.permute(0, 2, 3, 1).contiguous()


def run_kernel(case: dict, pre_gelu: bool) -> torch.Tensor:
    """conv3x3_circular_nhwc on the case's NHWC copies into a NaN-poisoned `out`; NCHW view."""
    batch, _, height, width = case["x"].shape
    c_out = case["weight"].shape[0]
    out = torch.full((batch, height, width, c_out), float("nan"), dtype=case["x"].dtype,
                     device=DEVICE)
    got = conv3x3_circular_nhwc(nhwc(case["x"]), case["weight"].permute(2, 3, 1, 0).contiguous(),
                                case["bias"], pre_gelu, case["shifts"], nhwc(case["residual"]),
                                nhwc(case["extra_input"]), out=out)
    assert got is out and torch.isfinite(out).all()
    return out.permute(0, 3, 1, 2)


def check_kernel(shape, dtype, pre_gelu, n_shifts, bias, residual, seed) -> None:
    case = conv_case(shape, dtype, bias, n_shifts, residual, seed)
    torch.testing.assert_close(run_kernel(case, pre_gelu).double(), oracle(case, pre_gelu),
                               **tol(dtype, pre_gelu))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_shifts", [0, 1, 2])
@pytest.mark.parametrize("pre_gelu", [False, True])
def test_kernel_epilogues_match_float64_reference(pre_gelu, n_shifts, bias, residual, extra, dtype):
    """Every combination of the options, on a small ragged shape (one tile)."""
    check_kernel((3, 3, 2 if extra else 0, 5, 4, 5), dtype, pre_gelu, n_shifts, bias, residual,
                 seed=16 * n_shifts + 8 * pre_gelu + 4 * bias + 2 * residual + extra)


# (B, C1, C2, C_out, H, W); C2 > 0 is the split input. The last one has several M, N and K blocks
# of the interpreter's 128×64×64 tile, each with a ragged end, and tiles that span samples.
SHAPES = [(3, 5, 0, 7, 5, 7), (2, 5, 4, 7, 8, 8), (3, 70, 9, 67, 8, 6)]
# (pre_gelu, shifts, bias, residual)
EPILOGUES = [(True, 2, True, True), (True, 1, False, False), (False, 2, True, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pre_gelu, n_shifts, bias, residual", EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_shapes_match_float64_reference(shape, pre_gelu, n_shifts, bias, residual, dtype):
    check_kernel(shape, dtype, pre_gelu, n_shifts, bias, residual, seed=sum(shape) + n_shifts)


def test_kernel_shifts_are_per_sample():
    """5 samples of 5×7 pixels: the interpreter's 128-row tiles start and end inside a sample, and
    each sample's shifts must reach exactly its rows (the wrong sample's shifts are far off)."""
    case = conv_case((5, 4, 3, 6, 5, 7), torch.float32, n_shifts=2, seed=11)
    got = run_kernel(case, pre_gelu=True).double()
    torch.testing.assert_close(got, oracle(case, True), **TOL[torch.float32])
    for shift in range(2):
        rolled = list(case["shifts"])
        rolled[shift] = rolled[shift].roll(1, dims=0)
        wrong = oracle({**case, "shifts": tuple(rolled)}, True)
        assert (got - wrong).abs().amax(dim=(1, 2, 3)).min() > 0.1


@pytest.mark.parametrize("channels_last", [False, True])
def test_op_triton_matches_torch_nchw(channels_last):
    case = conv_case((2, 6, 3, 5, 7, 6), torch.float32, n_shifts=2, seed=1)
    if channels_last:
        case = {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor)
                and v.ndim == 4 and k != "weight" else v for k, v in case.items()}
    got = conv3x3_circular(**case, pre_gelu=True, backend="triton")
    want = conv3x3_circular(**case, pre_gelu=True, backend="torch")
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_op_triton_follows_autocast():
    """bfloat16 compute (x, extra_input, weight rounded), float32 bias and shifts read as given."""
    case = conv_case((2, 4, 3, 6, 8, 8), torch.float32, n_shifts=2, seed=2)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = conv3x3_circular(**case, pre_gelu=True, backend="triton")
    assert got.dtype == torch.bfloat16
    rounded = {k: v.bfloat16() if k in ("x", "extra_input", "weight") else v for k, v in case.items()}
    torch.testing.assert_close(got.double(), oracle(rounded, True), **tol(torch.bfloat16, True))


def test_padding_is_periodic():
    """The output commutes with periodic shifts, and differs from zero padding on the border."""
    case = conv_case((2, 5, 3, 7, 8, 6), torch.float32, seed=3)
    out = conv3x3_circular(**case, pre_gelu=True, backend="triton")

    def roll(t):
        return t.roll((3, -2), dims=(2, 3))

    rolled = {k: roll(v) if k in ("x", "extra_input", "residual") else v for k, v in case.items()}
    torch.testing.assert_close(conv3x3_circular(**rolled, pre_gelu=True, backend="triton"),
                               roll(out), rtol=1e-5, atol=1e-5)
    h = F.conv2d(F.gelu(torch.cat([case["x"], case["extra_input"]], 1)), case["weight"],
                 case["bias"], padding=1)
    zero_padded = F.gelu(h + case["shifts"][0][:, :, None, None]) + case["residual"]
    border = torch.ones(8, 6, dtype=torch.bool, device=DEVICE)
    border[1:-1, 1:-1] = False
    torch.testing.assert_close(out[..., ~border], zero_padded[..., ~border], rtol=1e-4, atol=1e-4)
    assert (out - zero_padded)[..., border].abs().gt(1e-3).float().mean() > 0.8


def fake_block(c_in: int, c_out: int, embeddings: int, width: int, seed: int):
    """What residual_block reads, with fresh random values: conv1, conv2 and a 1×1 shortcut as
    plain (weight, bias) records (nn.Identity when c_in == c_out), nn.Linear shift maps."""
    g = torch.Generator().manual_seed(seed)

    def conv(ci, co, k):
        return types.SimpleNamespace(weight=fresh(g, co, ci, k, k, scale=(k * k * ci) ** -0.5),
                                     bias=fresh(g, co, scale=0.3))

    def linear():
        layer = nn.Linear(width, c_out, device=DEVICE)
        with torch.no_grad():
            layer.weight.copy_(fresh(g, c_out, width, scale=width**-0.5))
            layer.bias.copy_(fresh(g, c_out, scale=0.3))
        return layer

    return types.SimpleNamespace(
        conv1=conv(c_in, c_out, 3), conv2=conv(c_out, c_out, 3),
        shortcut=nn.Identity() if c_in == c_out else conv(c_in, c_out, 1),
        shift1=[linear() for _ in range(embeddings)], shift2=[linear() for _ in range(embeddings)])


def block_oracle(block, x, skip, embeddings) -> torch.Tensor:
    """The pre-activation residual block composed by hand, in float64."""
    u = (x if skip is None else torch.cat([x, skip], 1)).double()

    def conv(layer, h, maps):
        h = F.conv2d(F.pad(F.gelu(h), (1, 1, 1, 1), mode="circular"), layer.weight.double(),
                     layer.bias.double())
        for m, e in zip(maps, embeddings, strict=True):
            h = F.gelu(h + F.linear(e.double(), m.weight.double(), m.bias.double())[:, :, None, None])
        return h

    h = conv(block.conv2, conv(block.conv1, u, block.shift1), block.shift2)
    weight = getattr(block.shortcut, "weight", None)
    return h + (u if weight is None else F.conv2d(u, weight.double(), block.shortcut.bias.double()))


# (C of x, C of skip, C_out, embeddings): identity and 1×1 shortcuts, with and without skip
# (identity over the concatenation, split 1×1) and level embeddings
BLOCKS = [(6, 0, 6, 0), (5, 0, 7, 2), (6, 4, 5, 0), (6, 4, 5, 2), (4, 3, 7, 1)]


@pytest.mark.parametrize("c_x, c_skip, c_out, embeddings", BLOCKS)
def test_residual_block_backends(c_x, c_skip, c_out, embeddings):
    width = 9
    block = fake_block(c_x + c_skip, c_out, embeddings, width, seed=c_x + c_out + embeddings)
    g = torch.Generator().manual_seed(c_skip)
    x = fresh(g, 3, c_x, 8, 8)
    skip = fresh(g, 3, c_skip, 8, 8) if c_skip else None
    emb = tuple(fresh(g, 3, width) for _ in range(embeddings))
    want = block_oracle(block, x, skip, emb)
    with torch.no_grad():
        for backend in ("torch", "triton"):
            got = residual_block(block, x, skip, emb, backend=backend)
            torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh random parameters everywhere (the init zeroes the last conv of each block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.to(DEVICE)


def test_unet_triton_equals_torch():
    """Three levels, attention inside encoder and decoder units and in the middle, two heads whose
    level embeddings shift every decoder conv."""
    cfg = UNetConfig(in_channels=3, out_channels=2, grid=8, hidden=8, channel_mults=(1, 2, 2),
                     blocks_per_level=1, attention_levels=(1,), mid_attention=True,
                     attention_heads=2, heads=2, head_classes=11, head_hidden=16,
                     condition_decoder=True, level_embedding=12)
    model = randomize(UNet(cfg), seed=4)
    keys = list(model.state_dict())
    x = fresh(torch.Generator().manual_seed(5), 2, 3, 8, 8)
    with torch.no_grad():
        want, want_logits = model(x)
        got, got_logits = model(x, backend="triton")
    assert list(model.state_dict()) == keys
    assert want.abs().amax() > 0.1
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    for g, w in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float32])
    with torch.no_grad():
        assert torch.equal(model(x, backend="torch")[0], want)   # no backend state is left behind


def test_backend_errors():
    model = UNet(UNetConfig(in_channels=1, out_channels=1, grid=4, hidden=4, channel_mults=(1,),
                            blocks_per_level=1, attention_levels=(), mid_attention=False))
    x = fresh(torch.Generator(), 1, 1, 4, 4)
    with pytest.raises(BackendError, match="unknown backend 'cudnn'"):
        model.to(DEVICE)(x, backend="cudnn")
    with pytest.raises(BackendError, match="no backward"):
        model.to(DEVICE)(x, backend="triton")
    case = conv_case((1, 2, 0, 3, 4, 4), torch.float32)
    with pytest.raises(BackendError, match="no backward"):
        conv3x3_circular(**{**case, "shifts": (case["shifts"][0].requires_grad_(),)},
                         backend="triton")
    with pytest.raises(BackendError, match="no CUDA C"):
        conv3x3_circular(**case, backend="cuda")
    with pytest.raises(BackendError, match="no CUDA C"):
        residual_block(fake_block(2, 3, 0, 0, seed=0), case["x"], backend="cuda")
    # a network running every fused op under "cuda" runs this op's Triton kernel
    assert block_backend("triton", DEVICE) == conv_backend("triton", DEVICE) == "triton"
    assert block_backend("torch", DEVICE) == "torch"
    if DEVICE == "cuda" and CUDA_EXT_MISSING is None:
        assert block_backend("cuda", DEVICE) == "triton"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_inputs_are_named(backend):
    case = conv_case((1, 2, 1, 3, 4, 4), torch.float32, n_shifts=2)
    with pytest.raises(KernelInputError, match="weight has shape"):
        conv3x3_circular(**{**case, "extra_input": None}, backend=backend)
    with pytest.raises(KernelInputError, match="at most 2 shifts"):
        conv3x3_circular(**{**case, "shifts": case["shifts"] * 2}, backend=backend)
    with pytest.raises(KernelInputError, match="shift has shape"):
        conv3x3_circular(**{**case, "shifts": (case["shifts"][0][:, :2],)}, backend=backend)
    with pytest.raises(KernelInputError, match="residual has shape"):
        conv3x3_circular(**{**case, "residual": case["residual"][:, :2]}, backend=backend)


def test_kernel_refuses_bad_layouts():
    case = conv_case((2, 2, 0, 3, 4, 4), torch.float32)
    x, w, shift = nhwc(case["x"]), case["weight"].permute(2, 3, 1, 0).contiguous(), case["shifts"][0]
    with pytest.raises(KernelInputError, match="x is not contiguous"):
        conv3x3_circular_nhwc(case["x"].permute(0, 2, 3, 1), w)
    with pytest.raises(KernelInputError, match="weight has dtype"):
        conv3x3_circular_nhwc(x, w.bfloat16())
    with pytest.raises(KernelInputError, match="at most 2 shifts"):
        conv3x3_circular_nhwc(x, w, shifts=(shift,) * 3)
    with pytest.raises(KernelInputError, match=r"shifts\[1\] has shape"):
        conv3x3_circular_nhwc(x, w, shifts=(shift, shift[:1]))
    with pytest.raises(KernelInputError, match=r"shifts\[0\] has dtype"):
        conv3x3_circular_nhwc(x, w, shifts=(shift.double(),))
    with pytest.raises(KernelInputError, match=r"shifts\[0\] is not contiguous"):
        conv3x3_circular_nhwc(x, w, shifts=(shift.t().contiguous().t(),))
