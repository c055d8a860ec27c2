"""The fused circular 3×3 conv against the float64 torch reference, the residual block and a whole
U-Net with backend "triton" against "torch", periodicity, dispatch and input checks.

Triton runs in its interpreter on CPU (TRITON_INTERPRET=1, tests/conftest.py).
Runtime ≈ 20 s on one CPU core.
"""

import pytest
import torch
import torch.nn.functional as F

from sns_engine.kernels import KernelInputError
from sns_engine.kernels.conv_block import conv3x3_circular_nhwc
from sns_engine.models.unet import ResidualBlock, UNet, UNetConfig
from sns_engine.ops.conv_block import conv3x3_circular, conv3x3_reference, residual_block
from sns_engine.ops.dispatch import BackendError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Against the float64 oracle fed the same (rounded) inputs. float32: only the summation order of
# ≤ 9·79 products differs (~1e-6). bfloat16: products are exact and accumulate in float32, so the
# one rounding of the output dominates: < 1 ulp = 2⁻⁷ relative (Triton's interpreter truncates
# float32 → bfloat16; a GPU rounds to nearest, half that). A wrong tap, channel or wrap is O(1).
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2**-7, atol=1e-4)}
# (B, C1, C2, C_out, H, W); C2 > 0 is the split input. The last one has several M, N and K blocks
# of the interpreter's 128×64×64 tile, each with a ragged end.
SHAPES = [(3, 5, 0, 7, 8, 8), (3, 5, 0, 7, 5, 7), (3, 5, 4, 7, 8, 8), (3, 70, 9, 67, 8, 6)]
# (bias, act, residual)
EPILOGUES = [(False, None, False), (True, None, False), (True, "gelu", False),
             (True, "gelu", True), (False, "gelu", True)]


def fresh(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(shape, generator=gen) * scale).to(DEVICE, dtype)


def conv_case(shape, dtype, bias=True, residual=True, seed=0) -> dict:
    """NCHW inputs of conv3x3_circular: weights scaled to keep outputs O(1), fresh random values."""
    batch, c1, c2, c_out, height, width = shape
    g = torch.Generator().manual_seed(seed)
    return {"x": fresh(g, batch, c1, height, width, dtype=dtype),
            "extra_input": fresh(g, batch, c2, height, width, dtype=dtype) if c2 else None,
            "weight": fresh(g, c_out, c1 + c2, 3, 3, scale=(9 * (c1 + c2)) ** -0.5, dtype=dtype),
            "bias": fresh(g, c_out) if bias else None,
            "residual": fresh(g, batch, c_out, height, width, dtype=dtype) if residual else None}


def oracle(case: dict, act) -> torch.Tensor:
    wide = {k: None if v is None else v.double() for k, v in case.items()}
    return conv3x3_reference(act=act, **wide)


def nhwc(t):
    return None if t is None else t.permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias, act, residual", EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_float64_reference(shape, bias, act, residual, dtype):
    case = conv_case(shape, dtype, bias, residual, seed=sum(shape))
    batch, _, _, c_out, height, width = shape
    out = torch.full((batch, height, width, c_out), float("nan"), dtype=dtype, device=DEVICE)
    got = conv3x3_circular_nhwc(nhwc(case["x"]), case["weight"].permute(2, 3, 1, 0).contiguous(),
                                case["bias"], act, nhwc(case["residual"]), nhwc(case["extra_input"]),
                                out=out)
    assert got is out and torch.isfinite(out).all()
    torch.testing.assert_close(out.permute(0, 3, 1, 2).double(), oracle(case, act), **TOL[dtype])


@pytest.mark.parametrize("channels_last", [False, True])
def test_op_triton_matches_torch_nchw(channels_last):
    case = conv_case((2, 6, 3, 5, 7, 6), torch.float32, seed=1)
    if channels_last:
        case = {k: v.contiguous(memory_format=torch.channels_last) if v is not None and v.ndim == 4
                and k != "weight" else v for k, v in case.items()}
    got = conv3x3_circular(**case, backend="triton")
    want = conv3x3_circular(**case, backend="torch")
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_op_triton_follows_autocast():
    case = conv_case((2, 4, 0, 6, 8, 8), torch.float32, seed=2)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = conv3x3_circular(**case, backend="triton")
    assert got.dtype == torch.bfloat16
    rounded = {k: v.bfloat16() if k in ("x", "weight") else v for k, v in case.items()}
    torch.testing.assert_close(got.double(), oracle(rounded, "gelu"), **TOL[torch.bfloat16])


def test_padding_is_periodic():
    """The output commutes with periodic shifts, and differs from zero padding on the border."""
    case = conv_case((2, 5, 3, 7, 8, 6), torch.float32, seed=3)
    out = conv3x3_circular(**case, act=None, backend="triton")

    def roll(t):
        return t.roll((3, -2), dims=(2, 3))

    rolled_out = conv3x3_circular(roll(case["x"]), case["weight"], case["bias"], None,
                                  roll(case["residual"]), roll(case["extra_input"]), "triton")
    torch.testing.assert_close(rolled_out, roll(out), rtol=1e-5, atol=1e-5)
    zero_padded = F.conv2d(torch.cat([case["x"], case["extra_input"]], 1), case["weight"],
                           case["bias"], padding=1) + case["residual"]
    border = torch.ones(8, 6, dtype=torch.bool, device=DEVICE)
    border[1:-1, 1:-1] = False
    torch.testing.assert_close(out[..., ~border], zero_padded[..., ~border], rtol=1e-4, atol=1e-4)
    assert (out - zero_padded)[..., border].abs().gt(1e-3).float().mean() > 0.9


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh random parameters everywhere (the init zeroes the last conv of each block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.to(DEVICE)


@pytest.mark.parametrize("c_in, c_skip, c_out", [(6, 0, 6), (5, 0, 7), (6, 4, 5)])
def test_residual_block_backends(c_in, c_skip, c_out):
    block = randomize(ResidualBlock(c_in + c_skip, c_out), seed=c_in + c_out)
    g = torch.Generator().manual_seed(c_skip)
    x, skip = fresh(g, 3, c_in, 8, 8), fresh(g, 3, c_skip, 8, 8) if c_skip else None
    u = x if skip is None else torch.cat([x, skip], 1)
    with torch.no_grad():
        before = block.shortcut(u) + F.gelu(block.conv2(F.gelu(block.conv1(u))))  # the old forward
        assert torch.equal(block(x, skip), before)                                 # torch: bitwise
        got = residual_block(block, x, skip, backend="triton")
    torch.testing.assert_close(got, before, **TOL[torch.float32])


def test_unet_triton_equals_torch():
    """Three levels, attention inside encoder and decoder units and in the middle, two heads."""
    cfg = UNetConfig(in_channels=3, out_channels=2, grid=8, hidden=8, channel_mults=(1, 2, 2),
                     blocks_per_level=1, attention_levels=(1,), attention_heads=2, heads=2,
                     head_classes=11, head_hidden=16)
    model = randomize(UNet(cfg), seed=4)
    keys = list(model.state_dict())
    x = fresh(torch.Generator().manual_seed(5), 2, 3, 8, 8)
    with torch.no_grad():
        want, want_logits = model(x)
        assert model.set_backend("triton") is model
        got, got_logits = model(x)
    assert list(model.state_dict()) == keys
    assert want.abs().amax() > 0.1
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    for g, w in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float32])
    with torch.no_grad():
        assert torch.equal(model.set_backend("torch")(x)[0], want)


def test_backend_errors():
    model = UNet(UNetConfig(in_channels=1, out_channels=1, grid=4, hidden=4, channel_mults=(1,),
                            blocks_per_level=1, attention_levels=(), mid_attention=False))
    with pytest.raises(BackendError, match="no CUDA C"):
        model.set_backend("cuda")
    with pytest.raises(BackendError, match="no backward"):
        model.to(DEVICE).set_backend("triton")(fresh(torch.Generator(), 1, 1, 4, 4))
    case = conv_case((1, 2, 0, 3, 4, 4), torch.float32)
    with pytest.raises(BackendError, match="no CUDA C"):
        conv3x3_circular(**case, backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_inputs_are_named(backend):
    case = conv_case((1, 2, 1, 3, 4, 4), torch.float32)
    with pytest.raises(KernelInputError, match="weight has shape"):
        conv3x3_circular(**{**case, "extra_input": None}, backend=backend)
    with pytest.raises(KernelInputError, match="act must be"):
        conv3x3_circular(**case, act="relu", backend=backend)
    with pytest.raises(KernelInputError, match="residual has shape"):
        conv3x3_circular(**{**case, "residual": case["residual"][:, :2]}, backend=backend)


def test_kernel_refuses_bad_layouts():
    case = conv_case((1, 2, 0, 3, 4, 4), torch.float32)
    w = case["weight"].permute(2, 3, 1, 0).contiguous()
    with pytest.raises(KernelInputError, match="not contiguous"):
        conv3x3_circular_nhwc(case["x"].permute(0, 2, 3, 1), w)
    with pytest.raises(KernelInputError, match="weight has dtype"):
        conv3x3_circular_nhwc(nhwc(case["x"]), w.bfloat16())
