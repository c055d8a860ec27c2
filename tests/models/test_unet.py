"""U-Net backbone, presets and the three model wrappers: shapes, sizes, conditioning, configs."""

import dataclasses
import json

import pytest
import torch

from sns_engine.config import ConfigError, from_dict, to_dict
from sns_engine.models.emulator import Emulator
from sns_engine.models.refiner import Refiner, RefinerOutput
from sns_engine.models.thermalizer import Thermalizer
from sns_engine.models.unet import UNet, UNetConfig, count_parameters, unet_preset

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
    ops.level_argmax) reads the same levels as the argmax of the heads' logits."""
    model = randomize(Refiner(Refiner.unet_config("small", 1, GRID, num_levels=40)), seed=6)
    frames = [fresh(5, 1, GRID, GRID, seed=60 + s) for s in range(3)]
    with torch.no_grad():
        logits_y, logits_x = model.levels(*frames)
        n_y, n_x = model.estimate(*frames, backend=backend)
    assert torch.equal(n_y, logits_y.argmax(-1)) and torch.equal(n_x, logits_x.argmax(-1))
    assert len(set(n_x.tolist())) > 1                        # not a constant answer
    therm = randomize(Thermalizer(Thermalizer.unet_config("small", 1, GRID, num_levels=40)), seed=7)
    with torch.no_grad():
        assert torch.equal(therm.estimate(frames[0], backend=backend), therm.levels(frames[0]).argmax(-1))
