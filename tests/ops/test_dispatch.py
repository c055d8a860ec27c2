"""The backend table (ops.dispatch.IMPLEMENTATIONS), and the torch path without Triton: the ops and
the U-Net import, and their torch backends run, in a Python where `import triton` fails.
Runtime ≈ 10 s on one CPU core (the subprocess imports the package)."""

import subprocess
import sys
import textwrap

import pytest

from sns_engine.ops import conv_block, level_argmax, update
from sns_engine.ops.dispatch import IMPLEMENTATIONS, BackendError, implementation, op_backends

# Run in a fresh interpreter: triton is blocked before anything is imported (sys.modules[name] =
# None makes every `import triton` raise ImportError), then each op's torch backend runs on small
# random inputs and is checked against plain torch arithmetic.
WITHOUT_TRITON = textwrap.dedent("""
    import sys

    sys.modules["triton"] = None
    import torch

    import sns_engine.models.unet as unet
    import sns_engine.ops.conv_block as conv_block
    import sns_engine.ops.level_argmax as level_argmax
    import sns_engine.ops.update as update

    g = torch.Generator().manual_seed(0)
    b, levels = 3, 4
    x, y, eps_x, eps_y = (torch.randn(b, 2, 4, 4, generator=g) for _ in range(4))
    x0 = x.clone()
    n_x = torch.tensor([2, 1, 0], dtype=torch.int32)
    n_y = torch.full((b,), 3, dtype=torch.int32)
    moves = torch.tensor([[1, 0]] * b, dtype=torch.int32)          # phase 0 moves x
    counts = torch.tensor([[1, 0]] * b, dtype=torch.int32)
    member, step = torch.arange(b), torch.zeros(b, dtype=torch.int32)
    coefs = 0.5 + torch.rand(3, levels + 1, generator=g)
    update.ddpm_tick(x, y, eps_x, eps_y, n_x, n_y, moves, counts, member, step, 7, coefs,
                     backend="torch")
    assert n_x.tolist() == [1, 0, 0] and n_y.tolist() == [3, 3, 3] and not counts.any()
    assert (x[:2] != x0[:2]).all() and torch.equal(x[2], x0[2])

    frame = torch.randn(b, 2, 4, 4, generator=g)
    frame0 = frame.clone()
    level = torch.tensor([0, 1, 4], dtype=torch.int32)
    sqrt_ab, sqrt_1mab = torch.rand(levels + 1, generator=g), torch.rand(levels + 1, generator=g)
    update.renoise(frame, level, member, step, 7, sqrt_ab, sqrt_1mab, 2, backend="torch")
    assert torch.equal(frame[0], frame0[0]) and (frame[1:] != frame0[1:]).all()

    features, weight, bias = torch.randn(5, 6), torch.randn(9, 6), torch.randn(9)
    idx, p_max = level_argmax.level_argmax(features, weight, bias, True, backend="torch")
    logits = features @ weight.T + bias
    assert torch.equal(idx, logits.argmax(1))
    torch.testing.assert_close(p_max, logits.softmax(1).amax(1))

    cfg = unet.UNetConfig(in_channels=3, out_channels=2, grid=8, hidden=4, channel_mults=(1, 2),
                          blocks_per_level=1, heads=2, head_classes=5, head_hidden=6,
                          condition_decoder=True, level_embedding=3)
    model = unet.UNet(cfg)
    block = model.encoder[1][0].block                                # 4 → 8 channels, 1×1 shortcut
    h = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        block.conv2.weight.normal_(std=0.1, generator=g)             # the init zeroes it
        out, logits = model(torch.randn(2, 3, 8, 8), backend="torch")
        got = conv_block.residual_block(block, h, backend="torch")
        want = block.conv2(torch.nn.functional.gelu(block.conv1(torch.nn.functional.gelu(h))))
    assert out.shape == (2, 2, 8, 8) and [z.shape for z in logits] == [(2, 5)] * 2
    torch.testing.assert_close(got, want + block.shortcut(h))
    assert sys.modules["triton"] is None
    assert not [m for m in sys.modules if m.startswith("sns_engine.kernels.")]
    print("torch backends ran without triton")
""")


def test_ops_and_unet_import_and_run_on_torch_alone():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "torch backends ran without triton" in done.stdout


def test_table_names_every_backend_of_every_op():
    """Each entry imports and is a function; the torch entries are the ops' references; an op
    without a backend says so by name."""
    for (op, backend), target in IMPLEMENTATIONS.items():
        assert callable(implementation(op, backend)), target
    assert implementation("ddpm_tick", "torch") is update.tick_reference
    assert implementation("renoise", "torch") is update.renoise_reference
    assert implementation("level_argmax", "torch") is level_argmax.level_argmax_reference
    assert implementation("conv3x3_circular", "torch") is conv_block.conv3x3_reference
    for op in ("ddpm_tick", "renoise", "level_argmax"):
        assert op_backends(op) == ("torch", "triton", "cuda")
    assert op_backends("conv3x3_circular") == ("torch", "triton")
    with pytest.raises(BackendError, match="conv3x3_circular has no 'cuda' implementation"):
        implementation("conv3x3_circular", "cuda")
