"""Checkpoints trained with the authors' code, imported (sns_engine.authors).

Their networks are re-typed in tests/authors/theirs.py; small ones with random (PyTorch default)
weights are saved as their trainers save them (torch.save of {"state_dict", "config", …}; the
refiner inside their SNS_NS wrapper), imported, and our models' outputs compared with theirs in
float64. Their heads have N classes without a clean one: our logits over 0 … N carry −inf at
level 0 and argmax = their class + 1. The paper-size mapping is checked on the meta device.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch

from sns_engine.authors import AuthorsCheckpointError, import_authors, map_state, read_authors
from sns_engine.bundle import load_bundle
from sns_engine.models.refiner import Refiner
from sns_engine.models.unet import count_parameters

from . import theirs as T

N, GRID, TOL = 20, 16, 1e-12
ATTENTION = {"none": dict(is_attn=(False,) * 4, mid_attn=False),
             "ns": dict(is_attn=(False, False, True), mid_attn=True),       # Train_SNS_NS_config
             "qg": dict(is_attn=(False,) * 4, mid_attn=True)}               # Train_SNS_QG_config


def refiner_config(channels=1, attention="none", hidden=4, grid=GRID, classes=N, **extra):
    return dict(model_type="ModernUnetDoubleRegressor_plus", input_channels=3 * channels,
                output_channels=2 * channels, hidden_channels=hidden, norm=False, dim_mults=[2, 2, 2],
                n_blocks=2, activation="gelu", image_width=grid, image_height=grid,
                first_embedding_dim=classes, second_embedding_dim=classes, third_embedding_dim=None,
                diffusion_steps=classes, regression_output_dim=classes, noise_schedule="Cosine",
                **ATTENTION[attention], **extra)


def emulator_config(channels=1, **extra):
    return dict(model_type="ModernUnet", input_channels=channels, output_channels=channels,
                hidden_channels=4, norm=False, dim_mults=[2, 2, 2], n_blocks=2, mid_attn=False,
                is_attn=(False,) * 4, activation="gelu", **extra)


def thermalizer_config(channels=1, **extra):
    return {**emulator_config(channels, **extra), "model_type": "ModernUnetRegressor",
            "image_size": GRID, "timesteps": N}


def build(cls, cfg, seed):
    torch.manual_seed(seed)
    return cls(cfg).double().eval()


def save(path, state, config):
    """As their trainers: torch.save of a dict with the state dict and the config."""
    torch.save({"epoch": 3, "training_step": 7, "state_dict": state, "config": config,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    return path


def frames(batch, channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, batch, dtype=torch.float64)[:, None, None, None]
    return [torch.randn(batch, channels, GRID, GRID, generator=g, dtype=torch.float64) * scale
            for _ in range(3)]


def worst(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("channels,attention", [(1, "none"), (1, "ns"), (2, "qg")])
def test_imported_refiner_equals_theirs(tmp_path, channels, attention):
    net = build(T.ModernUnetDoubleRegressor_plus, refiner_config(channels, attention), seed=1)
    path = save(tmp_path / "checkpoint_best_ema.p", T.sns_state_dict(net, N),
                refiner_config(channels, attention))
    ours = read_authors(path, "refiner", GRID)
    assert ours.unet.head_classes == N and ours.model.label_offset == 1
    assert ours.unet.attention == ("standard" if attention == "none" else "authors")
    long, y, x = frames(12, channels)
    with torch.no_grad():
        eps, logits_short, logits_t = net(torch.cat([long, y, x], 1))
        out = ours.model(long, y, x)
        levels = ours.model.levels(long, y, x)
    assert worst(out.eps_y, eps[:, :channels]) < TOL and worst(out.eps_x, eps[:, channels:]) < TOL
    for mine, their in ((out.logits_y, logits_short), (out.logits_x, logits_t)):
        assert mine.shape == (12, N + 1) and torch.isneginf(mine[:, 0]).all()
        assert worst(mine[:, 1:], their) < TOL
    classes = net.ratio_class_both(torch.cat([long, y, x], 1))          # their (short, t) classes
    assert torch.equal(torch.stack([levels[0].argmax(-1), levels[1].argmax(-1)], 1), classes + 1)
    assert len(set(classes.flatten().tolist())) > 1                    # not one class for all
    f32 = read_authors(path, "refiner", GRID).model.float()           # the fused float32 argmax
    n_y, n_x = f32.estimate(long.float(), y.float(), x.float())
    assert torch.equal(torch.stack([n_y, n_x], 1), net.float().ratio_class_both(
        torch.cat([long, y, x], 1).float()) + 1)


@pytest.mark.parametrize("channels", [1, 2])
def test_imported_emulator_and_thermalizer_equal_theirs(tmp_path, channels):
    emu = build(T.EmulatorModernUnet, emulator_config(channels), seed=2)
    therm = build(T.ModernUnetRegressor, thermalizer_config(channels), seed=3)
    ours_emu = read_authors(save(tmp_path / "e.p", emu.state_dict(), emulator_config(channels)),
                            "emulator", GRID).model
    torch.save(therm.state_dict(), tmp_path / "t.pt")                   # a bare state dict
    ours_therm = read_authors(tmp_path / "t.pt", "thermalizer", GRID).model
    x = frames(12, channels, seed=1)[0]
    with torch.no_grad():
        assert worst(ours_emu(x), emu(x) + x) < TOL                    # their rollout: emu(x) + x
        eps, level = therm(x, True)
        mine_eps, mine_logits = ours_therm(x)
    assert worst(mine_eps, eps) < TOL and worst(mine_logits[:, 1:], level) < TOL
    assert torch.isneginf(mine_logits[:, 0]).all()
    assert torch.equal(ours_therm.levels(x).argmax(-1), therm.noise_class(x) + 1)
    assert torch.equal(ours_therm.float().estimate(x.float()), therm.float().noise_class(x.float()) + 1)


@pytest.mark.parametrize("attention,params", [("none", 73_727_522), ("ns", 79_249_442)])
def test_paper_size_refiner_maps_tensor_for_tensor(attention, params):
    """Their Kolmogorov refiner at paper size (meta device): every tensor maps; with the
    attention their config asks for, only the GroupNorms it never applies are left out."""
    cfg = refiner_config(1, attention, hidden=64, grid=64, classes=1000)
    with torch.device("meta"):
        net = T.ModernUnetDoubleRegressor_plus(cfg)
    assert count_parameters(net) == params
    ours = map_state(T.sns_state_dict(net, 1000), "refiner", 64)
    norms = [k for k in net.state_dict() if ".attn.norm." in k]
    assert set(ours.dropped) == set(norms) | set(T.cosine_buffers(1000))   # checked, not copied
    mine = sum(p.numel() for p in ours.model.parameters())             # frozen: not "trainable"
    assert mine == params - sum(net.state_dict()[k].numel() for k in norms)
    assert len(norms) == (0 if attention == "none" else 2 * 6)   # 2 + 3 blocks at 16², 1 middle


def test_their_qg_refiner_is_the_qg_paper_preset():
    """Their QG config (hidden 128, attention in the middle; meta device) has 238,509,540
    parameters and imports as our qg-paper refiner with their N-class heads, GroupNorm aside."""
    cfg = refiner_config(2, "qg", hidden=128, grid=64, classes=1000)
    with torch.device("meta"):
        net = T.ModernUnetDoubleRegressor_plus(cfg)
    assert count_parameters(net) == 238_509_540
    ours = map_state(T.sns_state_dict(net, 1000), "refiner", 64).model
    preset = Refiner.unet_config("qg-paper", 2, 64)
    assert ours.unet.cfg == dataclasses.replace(preset, head_classes=1000, label_offset=1)
    mine = sum(p.numel() for p in ours.parameters())                   # frozen: not "trainable"
    assert count_parameters(net) - mine == 2 * 1024                     # middle.attn.norm


def test_refused_checkpoints_name_the_tensors(tmp_path):
    cfg = refiner_config()
    state = T.sns_state_dict(build(T.ModernUnetDoubleRegressor_plus, cfg, seed=1), N)
    cases = {
        "extra": ({**state, "model.up.2.res.norm1.weight": torch.ones(8)}, "up.2.res.norm1.weight"),
        "missing": ({k: v for k, v in state.items() if k != "model.up.4.res.conv2.bias"},
                    "unet.decoder.1.0.block.conv2.bias"),   # up.3 is an Upsample
        "linear schedule": ({**state, "betas": torch.linspace(1e-4, 0.02, N)}, "not the cosine"),
        "unknown buffer": ({**state, "whitening_transform": torch.eye(2)}, "whitening_transform"),
    }
    for name, (bad, words) in cases.items():
        with pytest.raises(AuthorsCheckpointError, match=words.replace(".", r"\.")):
            read_authors(save(tmp_path / f"{name}.p", bad, cfg), "refiner", GRID)
    with pytest.raises(AuthorsCheckpointError, match=r"regressor_block_1\.linear1\.weight"):
        read_authors(save(tmp_path / "r.p", state, cfg), "refiner", 32)     # another grid
    with pytest.raises(AuthorsCheckpointError, match="ModernUnetDoubleRegressor_plus"):
        read_authors(save(tmp_path / "r.p", state, cfg), "thermalizer", GRID)
    with open(tmp_path / "pickled.p", "wb") as f:                      # their ThermalizerTrainer
        pickle.dump({"state_dict": state, "config": cfg}, f)
    with pytest.raises(AuthorsCheckpointError, match="weights_only"):
        read_authors(tmp_path / "pickled.p", "refiner", GRID)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Their three networks for 1-channel fields, saved as their trainers save them."""
    root = tmp_path_factory.mktemp("theirs")
    data = {"PDE": "Kolmogorov", "field_std": 4.44, "dt": 0.001, "Dt": 0.002, "reynolds": 10000}
    nets = {"refiner": build(T.ModernUnetDoubleRegressor_plus, refiner_config(1, "ns"), seed=1),
            "emulator": build(T.EmulatorModernUnet, emulator_config(1), seed=2),
            "thermalizer": build(T.ModernUnetRegressor, thermalizer_config(1), seed=3)}
    configs = {"refiner": refiner_config(1, "ns", **data), "emulator": emulator_config(1, **data),
               "thermalizer": thermalizer_config(1, **data)}
    states = {k: T.sns_state_dict(v, N) if k == "refiner" else v.state_dict() for k, v in nets.items()}
    paths = {k: save(root / f"{k}.p", states[k], configs[k]) for k in nets}
    return nets, paths


def test_import_writes_a_bundle_the_engine_loads(checkpoints, tmp_path):
    nets, paths = checkpoints
    with pytest.raises(ValueError, match="normalisation"):
        import_authors(paths["refiner"], system="kolmogorov", out=tmp_path / "b", normalisation=[1, 2],
                       system_params={"output_grid": GRID, "solver_grid": 32}, quiet=True)
    out = import_authors(paths["refiner"], emulator=paths["emulator"], thermalizer=paths["thermalizer"],
                         system="kolmogorov", out=tmp_path / "bundle", quiet=True,
                         system_params={"output_grid": GRID, "solver_grid": 32},
                         initial=torch.randn(3, 1, GRID, GRID))
    bundle = load_bundle(out)
    cfg = bundle.config
    assert cfg["normalisation"] == {"std": [4.44]} and "field_std" in cfg["authors"]["normalisation_source"]
    offsets = [cfg["models"][k]["unet"]["label_offset"] for k in ("refiner", "thermalizer", "emulator")]
    assert offsets == [1, 1, 0]                                    # in the refiner's U-Net config
    assert bundle.schedule.num_levels == N and bundle.initial.shape == (3, 1, GRID, GRID)
    assert bundle.model("refiner").label_offset == bundle.model("thermalizer").label_offset == 1
    for kind in nets:                                            # float32 copies of their weights
        ours = read_authors(paths[kind], kind, GRID).model.float().state_dict()
        assert all(torch.equal(v, ours[k]) for k, v in bundle.model(kind).state_dict().items())
    with pytest.raises(ValueError, match="not an empty directory"):
        import_authors(paths["refiner"], system="kolmogorov", out=out, quiet=True)
    with pytest.raises(AuthorsCheckpointError, match="Kolmogorov"):
        import_authors(paths["refiner"], system="qg", out=tmp_path / "q", quiet=True)


def test_their_data_config_sets_the_snapshot_step(checkpoints, tmp_path):
    """Their Kolmogorov loader copies its data config (dt, Dt, reynolds) into the checkpoint's:
    the bundle's system stores every Dt = 2 dt, not the preset's 5 dt; given values win."""
    out = import_authors(checkpoints[1]["refiner"], system="kolmogorov", out=tmp_path / "b",
                         quiet=True, system_params={"output_grid": GRID, "solver_grid": 32})
    system = load_bundle(out).system
    assert math.isclose(system.snapshot_dt, 0.002) and system.params["steps_per_snapshot"] == 2
    out = import_authors(checkpoints[1]["refiner"], system="kolmogorov", out=tmp_path / "c",
                         quiet=True, system_params={"output_grid": GRID, "solver_grid": 32,
                                                    "steps_per_snapshot": 4})
    assert math.isclose(load_bundle(out).system.snapshot_dt, 0.004)


def test_the_cli_imports_their_checkpoints(checkpoints, tmp_path, capsys):
    from sns_engine.cli import main

    _, paths = checkpoints
    out = tmp_path / "cli-bundle"
    main(["import-authors", "--refiner", str(paths["refiner"]), "--emulator", str(paths["emulator"]),
          "--system", "kolmogorov", "--out", str(out), "--set", f"output_grid={GRID}",
          "--set", "solver_grid=32", "--quiet"])
    bundle = load_bundle(out)
    assert bundle.model("refiner").label_offset == 1 and bundle.system.grid == GRID
    with pytest.raises(SystemExit) as err:
        main(["import-authors", "--refiner", str(tmp_path / "missing.p"), "--system", "kolmogorov",
              "--out", str(tmp_path / "x")])
    assert err.value.code == 2 and "missing.p" in capsys.readouterr().err
