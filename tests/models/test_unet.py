"""U-Net backbone, presets and the three model wrappers: shapes, sizes, conditioning, configs."""

import dataclasses
import json

import pytest
import torch

from sns_engine.config import ConfigError, from_dict, to_dict
from sns_engine.models.emulator import Emulator
from sns_engine.models.refiner import Refiner, RefinerOutput
from sns_engine.models.thermalizer import Thermalizer
from sns_engine.models.unet import UNet, count_parameters, forward_flops
from sns_engine.models.unet_config import UNetConfig, unet_preset
from sns_engine.models.unet_cpu import use_fast_cpu

GRID = 32   # small-preset forwards run at 32² to stay fast; sizes are checked at 64²


def fresh(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every parameter (the init zeroes some layers, which would hide them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


def paper_like(grid: int) -> UNetConfig:
    """The paper preset's topology (3 levels, 2 blocks each, conditioned decoder), narrow, with
    the authors' config-file attention (16² and middle) switched on."""
    return dataclasses.replace(Refiner.unet_config("paper", 1, grid), hidden=8, attention_heads=2,
                               attention_levels=(2,), mid_attention=True, head_hidden=32,
                               level_embedding=32)


@pytest.mark.parametrize("channels", [1, 2])
def test_small_preset_shapes(channels):
    torch.manual_seed(0)
    frames = [fresh(3, channels, GRID, GRID, seed=s) for s in range(3)]
    emu = Emulator(Emulator.unet_config("small", channels, GRID))
    assert emu(frames[0]).shape == (3, channels, GRID, GRID)
    ref = Refiner(Refiner.unet_config("small", channels, GRID, num_levels=1000))
    out = ref(*frames)
    assert isinstance(out, RefinerOutput)
    assert out.eps_y.shape == out.eps_x.shape == (3, channels, GRID, GRID)
    assert out.logits_y.shape == out.logits_x.shape == (3, 1001)
    assert torch.isfinite(torch.cat([o.flatten() for o in out])).all()
    therm = Thermalizer(Thermalizer.unet_config("small", channels, GRID, num_levels=50))
    eps, logits = therm(frames[0])
    assert eps.shape == (3, channels, GRID, GRID) and logits.shape == (3, 51)


PAPER_PARAMETERS = 73_727_522   # the paper's count of the authors' refiner (C = 1)


@pytest.mark.parametrize("channels", [1, 2])
def test_paper_preset_size_and_shapes_on_meta(channels):
    cfg = Refiner.unet_config("paper", channels, 64)
    assert cfg.level_channels == (128, 256, 512) and cfg.hidden == 64
    with torch.device("meta"):
        model = Refiner(cfg)
        out = model(*(torch.empty(2, channels, 64, 64) for _ in range(3)))
    assert out.eps_x.shape == (2, channels, 64, 64) and out.logits_y.shape == (2, 1001)
    if channels == 1:
        # the only difference is our clean class (N + 1 = 1001 logits where the authors have
        # 1000): +6 099 per head (its last two linears), +2 002 per embedding linear (4), and
        # +1 per output channel of the 4 embedding maps of every decoder block (Σ C = 2 240)
        clean_class = 2 * (4096 + 1 + 2 * 1001) + 4 * 2 * 1001 + 4 * 2240
        assert count_parameters(model) == PAPER_PARAMETERS + clean_class
        assert abs(count_parameters(model) / PAPER_PARAMETERS - 1) < 1e-3


QG_PAPER_PARAMETERS = 238_509_540   # the authors' count of their QG refiner (Train_SNS_QG_config)


def test_qg_paper_preset_is_the_authors_qg_refiner_on_meta():
    """qg-paper: the refiner 128 → 256·512·1024 with their attention in the middle only; with their
    N-class heads it has their count less the GroupNorm their attention never applies (2 × 1024);
    ours adds the clean class. Emulator and Thermalizer are the `paper` ones, as theirs for QG."""
    cfg = Refiner.unet_config("qg-paper", 2, 64)
    assert cfg.hidden == 128 and cfg.level_channels == (256, 512, 1024)
    assert (cfg.attention_levels, cfg.mid_attention, cfg.attention) == ((), True, "authors")
    with torch.device("meta"):
        model = Refiner(cfg)
        theirs = Refiner(dataclasses.replace(cfg, head_classes=1000, label_offset=1))
        out = model(*(torch.empty(2, 2, 64, 64) for _ in range(3)))
    assert out.eps_x.shape == (2, 2, 64, 64) and out.logits_y.shape == (2, 1001)
    assert count_parameters(theirs) + 2 * 1024 == QG_PAPER_PARAMETERS
    # clean class: +6 099 per head, +2 002 per embedding linear (4), +1 per output channel of the
    # 4 embedding maps of every decoder block (Σ C = 4 480)
    clean_class = 2 * (4096 + 1 + 2 * 1001) + 4 * 2 * 1001 + 4 * 4480
    assert count_parameters(model) == count_parameters(theirs) + clean_class == 238_545_618
    for kind in (Emulator, Thermalizer):
        assert kind.unet_config("qg-paper", 2, 64) == kind.unet_config("paper", 2, 64)


def test_decoder_reads_the_level_heads():
    """ModernUnetDoubleRegressor_plus: changing a head's logits changes ε̂ (and only the
    decoder reads them); the emulator and Thermalizer decoders are not conditioned."""
    model = randomize(Refiner(Refiner.unet_config("small", 1, GRID, num_levels=20)), seed=5)
    unet = model.unet
    frames = torch.cat([fresh(2, 1, GRID, GRID, seed=50 + s) for s in range(3)], dim=1)
    h, skips = unet.encode(frames)
    logits = unet.level_logits(h)
    base = unet.decode(h, list(skips), logits)
    torch.testing.assert_close(base, unet(frames)[0])
    for head in range(2):
        moved = [z.clone() for z in logits]
        moved[head][:, 3] += 5.0
        assert not torch.allclose(unet.decode(h, list(skips), moved), base, atol=1e-5)
    with pytest.raises(ValueError, match="conditioned on 2 heads"):
        unet.decode(h, list(skips))
    assert Refiner.unet_config("small", 1, GRID).condition_decoder
    assert not Thermalizer.unet_config("small", 1, GRID).condition_decoder
    assert not Emulator.unet_config("small", 1, GRID).condition_decoder


def test_small_preset_sizes():
    for model in (Refiner(Refiner.unet_config("small", 2, 64)),
                  Emulator(Emulator.unet_config("small", 2, 64)),
                  Thermalizer(Thermalizer.unet_config("small", 2, 64))):
        count = count_parameters(model)
        print(f"\nsmall {type(model).__name__}, C=2, 64²: {count:,} parameters")
        assert count <= 2_000_000


def test_unknown_preset_and_bad_configs():
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        unet_preset("huge", 1, 1, 64)
    with pytest.raises(ConfigError, match="not divisible"):
        UNetConfig(1, 1, grid=34)                                 # 34 is not a multiple of 4
    with pytest.raises(ConfigError, match="condition_decoder"):
        UNetConfig(1, 1, grid=64, condition_decoder=True)
    with pytest.raises(ConfigError, match="attention_levels"):
        UNetConfig(1, 1, grid=64, attention_levels=(3,))
    with pytest.raises(ConfigError, match="attention_heads"):
        UNetConfig(1, 1, grid=64, mid_attention=True, attention_heads=3)
    with pytest.raises(ConfigError, match="refiner"):
        Refiner(Emulator.unet_config("small", 1, 32))
    with pytest.raises(ConfigError, match="emulator"):
        Emulator(Refiner.unet_config("small", 1, 32))
    with pytest.raises(ConfigError, match="Thermalizer"):
        Thermalizer(Emulator.unet_config("small", 1, 32))
    net = UNet(unet_preset("small", 1, 1, GRID))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        net(fresh(2, 1, 16, 16))


def test_config_json_round_trip():
    cfg = Refiner.unet_config("paper", 2, 64, num_levels=500)
    plain = json.loads(json.dumps(dataclasses.asdict(cfg)))   # tuples became lists
    assert UNetConfig(**plain) == cfg
    assert from_dict(UNetConfig, to_dict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = 8


def test_encoder_commutes_with_periodic_shifts():
    """The encoder (circular convs, stride-2 downsampling) commutes with shifts by multiples of
    the downsampling factor; the decoder need not (the authors' transposed convs pad with zeros,
    and it reads the flattening heads)."""
    cfg = paper_like(32)
    unet = randomize(UNet(cfg), seed=1).double()
    x = fresh(2, cfg.in_channels, 32, 32, seed=10).double()
    base, _ = unet.encode(x)
    step = cfg.downsampling
    for shift in ((step, 0), (0, 3 * step), (-2 * step, step)):
        rolled, _ = unet.encode(x.roll(shift, dims=(-2, -1)))
        bottleneck_shift = (shift[0] // step, shift[1] // step)
        torch.testing.assert_close(rolled, base.roll(bottleneck_shift, dims=(-2, -1)),
                                   rtol=1e-9, atol=1e-10)
    rolled, _ = unet.encode(x.roll(1, dims=-1))      # a one-pixel shift is not a symmetry
    assert rolled.shape == base.shape and not torch.allclose(rolled, base, atol=1e-6)


def test_levels_only_path_matches_forward():
    model = randomize(Refiner(Refiner.unet_config("small", 1, GRID, num_levels=20)), seed=2)
    frames = [fresh(2, 1, GRID, GRID, seed=20 + s) for s in range(3)]
    out = model(*frames)
    logits_y, logits_x = model.levels(*frames)
    torch.testing.assert_close(logits_y, out.logits_y)
    torch.testing.assert_close(logits_x, out.logits_x)
    assert not torch.allclose(out.logits_x, out.logits_y)     # two distinct heads
    therm = Thermalizer(Thermalizer.unet_config("small", 1, GRID, num_levels=20))
    torch.testing.assert_close(therm.levels(frames[0]), therm(frames[0])[1])


def test_emulator_predicts_a_residual():
    emu = randomize(Emulator(Emulator.unet_config("small", 2, GRID)), seed=3)
    x = fresh(2, 2, GRID, GRID, seed=30)
    residual = emu.unet(x)[0]
    assert residual.abs().mean() > 0.01
    torch.testing.assert_close(emu(x) - x, residual)


def test_initialisation_starts_at_identity_with_order_one_activations():
    """Fresh models: emulator = persistence, ε̂ = 0; deep features neither vanish nor explode."""
    torch.manual_seed(4)
    x = fresh(4, 1, 64, 64, seed=40)
    assert torch.equal(Emulator(Emulator.unet_config("small", 1, 64))(x), x)
    model = Refiner(paper_like(64))
    frames = [fresh(4, 1, 64, 64, seed=41 + s) for s in range(3)]
    out = model(*frames)
    assert torch.equal(out.eps_x, torch.zeros_like(out.eps_x))
    bottleneck, _ = model.unet.encode(torch.cat(frames, dim=1))
    assert 0.3 < bottleneck.std().item() < 3.0
    assert 0.3 < out.logits_x.std().item() < 3.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_level_estimates_equal_the_argmax_of_the_logits(backend):
    """The estimate (encoder, middle, heads' features, then last linear + argmax in one op,
    ops.level_argmax) reads the same levels as the argmax of the heads' logits, both passes with
    the same backend (the conv blocks run under it too)."""
    model = randomize(Refiner(Refiner.unet_config("small", 1, GRID, num_levels=40)), seed=6)
    frames = [fresh(5, 1, GRID, GRID, seed=60 + s) for s in range(3)]
    with torch.no_grad():
        logits_y, logits_x = model.levels(*frames, backend=backend)
        n_y, n_x = model.estimate(*frames, backend=backend)
    assert torch.equal(n_y, logits_y.argmax(-1)) and torch.equal(n_x, logits_x.argmax(-1))
    assert len(set(n_x.tolist())) > 1                        # not a constant answer
    therm = randomize(Thermalizer(Thermalizer.unet_config("small", 1, GRID, num_levels=40)), seed=7)
    with torch.no_grad():
        assert torch.equal(therm.estimate(frames[0], backend=backend),
                           therm.levels(frames[0], backend=backend).argmax(-1))


def hand_flops(cfg: UNetConfig, levels_only: bool = False) -> int:
    """Σ 2·C_in·C_out·k²·H·W over the convs (input pixels for the transposed ones) and 2·in·out
    over the linears of one member's pass, from the architecture (module docstring of unet.py)."""
    def conv(c_in, c_out, k, side):
        return 2 * c_in * c_out * k * k * side * side

    def block(c_in, c_out, side, embeddings=0, width=0):
        shortcut = conv(c_in, c_out, 1, side) if c_in != c_out else 0
        return (conv(c_in, c_out, 3, side) + conv(c_out, c_out, 3, side) + shortcut
                + 2 * embeddings * 2 * width * c_out)

    sides = [cfg.grid >> i for i in range(len(cfg.level_channels))]
    total, c, skips = conv(cfg.in_channels, cfg.hidden, 3, cfg.grid), cfg.hidden, [cfg.hidden]
    for i, (ci, side) in enumerate(zip(cfg.level_channels, sides, strict=True)):
        for _ in range(cfg.blocks_per_level):
            total, c = total + block(c, ci, side), ci
            skips.append(c)
        if i < len(sides) - 1:
            total += conv(c, c, 3, side // 2)
            skips.append(c)
    total += 2 * block(c, c, sides[-1])
    hidden, classes = cfg.head_hidden or cfg.head_classes, cfg.head_classes
    total += cfg.heads * (conv(c, c, 3, sides[-1]) + conv(c, cfg.head_channels, 1, sides[-1])
                          + 2 * cfg.head_channels * sides[-1] ** 2 * hidden + 2 * hidden * classes)
    if levels_only:
        return total
    n_emb, width = (cfg.heads, cfg.embedding_width) if cfg.condition_decoder else (0, 0)
    total += n_emb * (2 * classes * width + 2 * width * width)
    for i in reversed(range(len(sides))):
        outs = [cfg.level_channels[i]] * cfg.blocks_per_level + [cfg.level_channels[i - 1] if i
                                                                 else cfg.hidden]
        for out in outs:
            total, c = total + block(c + skips.pop(), out, sides[i], n_emb, width), out
        if i:
            total += conv(c, c, 4, sides[i])       # transposed: 4×4 taps per input pixel
    return total + conv(c, cfg.out_channels, 3, cfg.grid)


TINY = UNetConfig(in_channels=3, out_channels=2, grid=8, hidden=2, channel_mults=(2, 2),
                  blocks_per_level=1, heads=2, head_classes=5, head_channels=3, head_hidden=4,
                  condition_decoder=True, level_embedding=6)


@pytest.mark.parametrize("cfg", [TINY, unet_preset("small", 1, 1, 64),
                                 Refiner.unet_config("small", 1, 64)],
                         ids=["tiny", "small_emulator", "small_refiner"])
def test_forward_flops_equal_the_hand_count(cfg):
    """FlopCounterMode's count (meta device, batch 1) is the hand count of convs and linears."""
    assert forward_flops(UNet(cfg)) == hand_flops(cfg)
    assert forward_flops(UNet(cfg), "levels") == hand_flops(cfg, levels_only=True)


def test_forward_flops_per_member_of_a_counted_batch_and_of_the_wrappers():
    from torch.utils.flop_counter import FlopCounterMode

    model = randomize(Refiner(Refiner.unet_config("small", 1, GRID, num_levels=20)), seed=8)
    frames = [fresh(3, 1, GRID, GRID, seed=80 + s) for s in range(3)]
    for kind, run in (("forward", model), ("levels", model.levels)):
        with FlopCounterMode(display=False) as counter:
            run(*frames)
        assert counter.get_total_flops() == 3 * forward_flops(model, kind)
    assert forward_flops(model) == forward_flops(model.unet) > forward_flops(model, "levels")
    emu = Emulator(Emulator.unet_config("small", 1, GRID))
    assert forward_flops(emu) == hand_flops(emu.unet.cfg)
    with pytest.raises(ValueError, match="unknown pass"):
        forward_flops(model, "decoder")
    with pytest.raises(ValueError, match="no single UNet"):
        forward_flops(torch.nn.Conv2d(1, 1, 3))


def fast_and_reference(model: torch.nn.Module, run):
    """run(model) under no_grad on the CPU fast path and on the eager NCHW reference."""
    with torch.no_grad():
        fast = run(use_fast_cpu(model, True))
        reference = run(use_fast_cpu(model, False))
    use_fast_cpu(model, True)
    return fast, reference


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal up to float32 rounding: rtol 1e-4, atol `atol` of the output's scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol * scale)


@pytest.mark.parametrize("channels", [1, 2])
def test_cpu_fast_path_equals_the_eager_reference(channels, monkeypatch):
    """Channels-last convs, hand-made circular halo, batched heads, chunks (of 2 here): the same
    networks up to float32 rounding, on fresh random inputs and weights, for every pass of every
    wrapper. (The deeper paper-like net with attention: both paths are 1.5e-5 of its scale off
    its float64 value.)"""
    import sns_engine.models.unet_cpu as unet_cpu

    monkeypatch.setattr(unet_cpu, "FAST_CPU_CHUNK", 2)
    frames = [fresh(5, channels, GRID, GRID, seed=90 + s) for s in range(3)]
    emu = randomize(Emulator(Emulator.unet_config("small", channels, GRID)), seed=9)
    ref = randomize(Refiner(Refiner.unet_config("small", channels, GRID, num_levels=40)), seed=10)
    therm = randomize(Thermalizer(Thermalizer.unet_config("small", channels, GRID, num_levels=40)),
                      seed=11)
    paper = randomize(Refiner(dataclasses.replace(paper_like(GRID), in_channels=3 * channels,
                                                  out_channels=2 * channels)), seed=12)
    cases = [(emu, lambda m: [m(frames[0])], 1e-5), (ref, lambda m: list(m(*frames)), 1e-5),
             (ref, lambda m: list(m.levels(*frames)), 1e-5),
             (therm, lambda m: [m(frames[0])[0]], 1e-5), (paper, lambda m: list(m(*frames)), 1e-4)]
    for model, run, atol in cases:
        fast, reference = fast_and_reference(model, run)
        for a, b in zip(fast, reference, strict=True):
            assert a.shape == b.shape and a.is_contiguous() == b.is_contiguous()
            assert_close_to_scale(a, b, atol)
    estimates, reference = fast_and_reference(ref, lambda m: m.estimate(*frames))
    assert all(torch.equal(a, b) for a, b in zip(estimates, reference, strict=True))


def test_cpu_fast_path_is_taken_only_for_float32_cpu_inference_with_the_torch_backend(monkeypatch):
    """Training (gradients), float64, the Triton backend and use_fast_cpu(model, False) run the
    reference; training still has its backward."""
    import sns_engine.models.unet_cpu as unet_cpu

    blocks = []
    fast_block = unet_cpu.block
    monkeypatch.setattr(unet_cpu, "block", lambda *a: blocks.append(1) or fast_block(*a))
    unet = randomize(UNet(Refiner.unet_config("small", 1, GRID, num_levels=20)), seed=13)
    x = fresh(2, 3, GRID, GRID, seed=130)

    def fast(model, inputs, grad=False, backend="torch"):
        blocks.clear()
        with torch.set_grad_enabled(grad):
            model.levels(inputs, backend=backend)
        return bool(blocks)

    assert fast(unet, x)
    assert not fast(unet, x, grad=True)                       # parameters need gradients
    assert fast(unet.requires_grad_(False), x, grad=True)    # nothing needs one
    assert not fast(unet.double(), x.double())
    assert not fast(use_fast_cpu(unet.float(), False), x)
    assert not fast(use_fast_cpu(unet), x, backend="triton")
    loss = UNet(Refiner.unet_config("small", 1, GRID, num_levels=20))(x)[0].square().sum()
    loss.backward()
