"""The CPU fast path's helpers (models/unet_cpu.py) against their eager references on random
inputs of odd sizes, with every reused buffer poisoned with NaN before the call."""

import threading

import pytest
import torch
import torch.nn.functional as F

from sns_engine.models import unet_cpu
from sns_engine.models.unet import LevelHead, ResidualBlock

from .test_unet import randomize

CL = torch.channels_last


def fresh(*shape, seed=0, layout=CL):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(
        memory_format=layout)


def poison_scratch(numel: int = 1 << 20) -> None:
    """This thread's scratch memory, at least `numel` floats, all NaN."""
    unet_cpu.scratch(torch.empty(1), numel)
    unet_cpu._SCRATCH.buffer.fill_(float("nan"))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding (a halo off by one pixel is off by O(1))."""
    torch.testing.assert_close(actual, expected, rtol=1e-5,
                               atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("with_skip", [False, True])
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_circular_pad_equals_f_pad_of_the_gelu_of_the_concatenation(gelu, with_skip, layout):
    """Into a new tensor and into (NaN-poisoned) scratch memory; 5 × 7 pixels, 3 + 2 channels,
    channels_last or NCHW inputs."""
    t, skip = fresh(2, 3, 5, 7, seed=1, layout=layout), fresh(2, 2, 5, 7, seed=2, layout=layout)
    skip = skip if with_skip else None
    u = t if skip is None else torch.cat([t, skip], dim=1)
    expected = F.pad(F.gelu(u) if gelu else u, (1, 1, 1, 1), mode="circular")
    got = unet_cpu.circular_pad(t, gelu, skip)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=CL)
    close(got, expected)
    poison_scratch()
    close(unet_cpu.padded(t, gelu, skip), expected)


def test_scratch_reuses_one_buffer_per_thread_and_grows():
    like = torch.empty(4, 1)
    first = unet_cpu.scratch(like, 3, 5)
    smaller = unet_cpu.scratch(like[:2], 2, 2)
    assert first.shape == (4, 3, 5) and smaller.shape == (2, 2, 2)
    assert smaller.data_ptr() == first.data_ptr()
    larger = unet_cpu.scratch(like, 100, 100)
    assert larger.shape == (4, 100, 100) and larger.is_contiguous()
    assert unet_cpu.scratch(like, 3, 5).data_ptr() == larger.data_ptr()
    other: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: other.append(unet_cpu.scratch(like, 3, 5)))
    thread.start()
    thread.join()
    assert other[0].data_ptr() != larger.data_ptr()


def test_padded_views_stay_right_across_shapes_and_a_grown_scratch():
    """`padded` keeps its views of the scratch memory from call to call: shapes in turn, the
    memory grown in between (its views then remade), each result right."""
    def check(t, skip=None):
        u = t if skip is None else torch.cat([t, skip], dim=1)
        close(unet_cpu.padded(t, True, skip), F.pad(F.gelu(u), (1, 1, 1, 1), mode="circular"))

    small, other = fresh(2, 3, 5, 7, seed=4), fresh(3, 3, 5, 7, seed=5)
    skip = fresh(2, 2, 5, 7, seed=6)
    unet_cpu._SCRATCH.buffer = None
    poison_scratch(1000)
    for t, s in [(small, None), (small, skip), (other, None), (small, None)]:
        check(t, s)
    before = unet_cpu._SCRATCH.buffer.data_ptr()
    check(fresh(4, 8, 31, 33, seed=7))                  # grows the scratch memory
    assert unet_cpu._SCRATCH.buffer.data_ptr() != before
    unet_cpu._SCRATCH.buffer.fill_(float("nan"))
    check(small, skip)


def test_scratch_made_in_inference_mode_is_writable_outside_it():
    unet_cpu._SCRATCH.buffer = None
    with torch.inference_mode():
        unet_cpu.scratch(torch.empty(1), 10).fill_(1.0)
    with torch.no_grad():
        assert unet_cpu.scratch(torch.empty(1), 10).fill_(2.0).sum().item() == 20.0


@pytest.mark.parametrize("c_x, c_skip, c_out, embeddings", [
    (5, 0, 5, 0),    # identity shortcut (the middle blocks)
    (3, 0, 6, 0),    # 1×1 shortcut (an encoder block)
    (6, 4, 5, 2),    # skip and two level embeddings (a refiner's decoder block)
    (2, 3, 5, 1),    # identity shortcut over x and skip
])
def test_block_equals_the_eager_residual_block(c_x, c_skip, c_out, embeddings):
    """On 9 × 7 pixels, its scratch memory poisoned before the call."""
    block = randomize(ResidualBlock(c_x + c_skip, c_out, embeddings, width=4), seed=c_x + c_out)
    x = fresh(3, c_x, 9, 7, seed=10)
    skip = fresh(3, c_skip, 9, 7, seed=11) if c_skip else None
    embs = tuple(fresh(3, 4, seed=12 + j, layout=torch.contiguous_format)
                 for j in range(embeddings))
    with torch.no_grad():
        expected = block(x.contiguous(), None if skip is None else skip.contiguous(), embs)
        poison_scratch()
        got = unet_cpu.block(block, x, skip, embs)
    assert got.is_contiguous(memory_format=CL)
    close(got, expected)


def test_heads_features_equal_each_heads_eager_features():
    heads = torch.nn.ModuleList(randomize(LevelHead(6, 5, 3, 8, 4), seed=20 + i)
                                for i in range(2))
    h = fresh(3, 6, 5, 5, seed=21)
    with torch.no_grad():
        expected = [head.features(h.contiguous()) for head in heads]
        poison_scratch()
        got = unet_cpu.heads_features(heads, h)
    for a, b in zip(got, expected, strict=True):
        close(a, b)


def test_the_fast_path_runs_the_counted_flops():
    """FlopCounterMode over fast-path passes counts forward_flops per member: no conv of the fast
    path computes outputs the network does not have (a halo's, say)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sns_engine.models.refiner import Refiner
    from sns_engine.models.unet import forward_flops

    model = Refiner(Refiner.unet_config("small", 1, 32, num_levels=20))
    frames = [fresh(3, 1, 32, 32, seed=30 + s, layout=torch.contiguous_format) for s in range(3)]
    for kind, run in (("forward", model), ("levels", model.levels)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run(*frames)
        assert counter.get_total_flops() == 3 * forward_flops(model, kind)


@pytest.mark.parametrize("packing", [True, False])
def test_conv2d_equals_f_conv2d_and_follows_weight_changes(packing, monkeypatch):
    """Plain, with its GELU, grouped over two stacked convs (stride 2); the packed weights are
    remade after an in-place update and dropped with the conv."""
    import gc

    monkeypatch.setattr(unet_cpu, "PACKING", packing and unet_cpu.PACKING)
    convs = tuple(randomize(torch.nn.Conv2d(3, 4, 3, stride=2), seed=40 + i) for i in range(2))
    t = fresh(3, 6, 9, 11, seed=41)
    w, b = torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs])
    with torch.no_grad():
        expected = F.conv2d(t[:, :3], convs[0].weight, convs[0].bias, 2)
        close(unet_cpu.conv2d(convs[0], t[:, :3].contiguous(memory_format=CL)), expected)
        close(unet_cpu.conv2d(convs[0], t[:, :3].contiguous(memory_format=CL), gelu=True),
              F.gelu(expected))
        close(unet_cpu.conv2d(convs, t, groups=2), F.conv2d(t, w, b, 2, groups=2))
        convs[0].weight.mul_(-2.0)   # an optimizer step, a load_state_dict: the version moves
        close(unet_cpu.conv2d(convs[0], t[:, :3].contiguous(memory_format=CL)),
              F.conv2d(t[:, :3], convs[0].weight, convs[0].bias, 2))
    if packing and unet_cpu.PACKING:
        keys = {(1, id(convs[0])), (2, *map(id, convs))}
        assert keys <= set(unet_cpu._PACKED)
        del convs, w, b
        gc.collect()
        assert not keys & set(unet_cpu._PACKED)


def test_the_fast_path_gives_a_member_the_same_bits_in_any_batch():
    """A refiner-shaped U-Net (two heads, conditioned decoder) on the fast path: every member's
    outputs and logits are the same bits alone, in a pair or in the batch of 6 (the linears go
    row by row, ops.row_linear; F.linear's would differ at one or two rows)."""
    from sns_engine.models.refiner import Refiner
    from sns_engine.models.unet import UNet

    if not unet_cpu.convs_batch_invariant():
        pytest.skip("oneDNN's convs on this CPU are not batch-invariant")
    unet = randomize(UNet(Refiner.unet_config("small", 1, 16, num_levels=20)), seed=52)
    x = fresh(6, 3, 16, 16, seed=53, layout=torch.contiguous_format)
    with torch.no_grad():
        out, logits = unet(x)
        estimates = unet.level_estimates(x)
        for a, b in ((0, 1), (4, 6), (1, 4)):
            part_out, part_logits = unet(x[a:b])
            assert torch.equal(part_out, out[a:b])
            assert all(torch.equal(p, w[a:b]) for p, w in zip(part_logits, logits, strict=True))
            assert all(torch.equal(p, w[a:b]) for p, w in
                       zip(unet.level_estimates(x[a:b]), estimates, strict=True))
