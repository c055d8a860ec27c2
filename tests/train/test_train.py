"""Training loop and its failure modes, on a tiny real dataset (bundles: tests/bundle)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sns_engine.bundle import BundleError, load_bundle
from sns_engine.config import TrainConfig
from sns_engine.data import FrameWindows
from sns_engine.train.loop import TrainingError, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def history(bundle: Path, model: str) -> list[dict]:
    return json.loads((bundle / "train" / f"{model}.json").read_text())["history"]


@pytest.fixture(scope="module")
def coarse_kolmogorov(tmp_path_factory):
    """Tiny data with 50 solver steps between snapshots: the emulator starts as the identity
    (zero-initialised output), which is already near-optimal for 5-step snapshots."""
    from sns_engine.cli import main

    out = tmp_path_factory.mktemp("coarse") / "k.zarr"
    main(["data", "kolmogorov", "--trajectories", "4", "--snapshots", "30", "--out", str(out),
          "--set", "solver_grid=32", "--set", "output_grid=32", "--set", "spinup_steps=200",
          "--set", "steps_per_snapshot=50", "--quiet"])
    return out


@pytest.mark.parametrize("model", ["emulator", "refiner", "thermalizer"])
def test_loss_falls(tiny_kolmogorov, coarse_kolmogorov, tmp_path, model):
    cfg = TrainConfig(model=model, steps=40, batch_size=8, lag=10, lr=1e-3, val_every=20,
                      checkpoint_every=20)
    train(cfg, coarse_kolmogorov if model == "emulator" else tiny_kolmogorov, tmp_path / "b",
          quiet=True)
    h = history(tmp_path / "b", model)
    assert h[-1]["val_loss"] < 0.8 * h[0]["val_loss"], h


def test_retraining_needs_resume_or_overwrite(tiny_kolmogorov, tiny_bundle, tmp_path):
    before = (tiny_bundle / "emulator.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already has a emulator"):
        train(TrainConfig(model="emulator", steps=5, batch_size=4), tiny_kolmogorov, tiny_bundle,
              quiet=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(TrainConfig(model="emulator", steps=5), tiny_kolmogorov, tmp_path / "new",
              resume=True, quiet=True)
    assert (tiny_bundle / "emulator.safetensors").read_bytes() == before


def test_data_of_another_grid_or_system_is_refused(tiny_bundle, tmp_path):
    from sns_engine.bundle import BundleError as Refused
    from sns_engine.cli import main

    other = tmp_path / "k16.zarr"
    main(["data", "kolmogorov", "--trajectories", "2", "--snapshots", "12", "--out", str(other),
          "--set", "solver_grid=16", "--set", "output_grid=16", "--set", "spinup_steps=10",
          "--quiet"])
    before = (tiny_bundle / "config.json").read_text()
    with pytest.raises(Refused, match="bundle holds grid=32 but the data has grid=16"):
        train(TrainConfig(model="refiner", steps=2, batch_size=2, lag=2), other, tiny_bundle,
              overwrite=True, quiet=True)
    assert (tiny_bundle / "config.json").read_text() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_kolmogorov, tmp_path):
    out = tmp_path / "b"
    train(TrainConfig(model="emulator", steps=4, batch_size=4, checkpoint_every=2),
          tiny_kolmogorov, out, quiet=True)
    good = (out / "emulator.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="loss is (nan|inf)"):
        train(TrainConfig(model="emulator", steps=8, batch_size=4, lr=1e30,
                          checkpoint_every=2), tiny_kolmogorov, out, resume=True, quiet=True)
    assert (out / "emulator.safetensors").read_bytes() == good
    assert json.loads((out / "train" / "emulator.json").read_text())["step"] == 4


def test_kill_mid_training_then_resume(tiny_kolmogorov, tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "sns_engine.cli", "train", "refiner", "--data",
           str(tiny_kolmogorov), "--out", str(out), "--steps", "400", "--batch-size", "4",
           "--lag", "10", "--checkpoint-every", "5", "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV)
    record = out / "train" / "refiner.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (record.exists()
                                          and json.loads(record.read_text())["step"] >= 10):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(record.read_text())["step"]
    assert 10 <= step < 400
    subprocess.run([*cmd[:-1], "--steps", str(step + 5), "--resume", "--quiet"], check=True, env=ENV)
    resumed = json.loads(record.read_text())
    assert resumed["step"] == step + 5
    assert load_bundle(out).models["refiner"] is not None


def test_ddp_step_equals_single_process_step(tiny_kolmogorov, tmp_path):
    """One refiner step on 2 DDP ranks (4 members each) equals one on 1 process (8 members): the
    gradients the optimizer sees and the weights after the AdamW step.

    Both runs are in float64 (ddp_step.py). In float32 the comparison is flaky: AdamW's first step
    moves a weight by lr·ĝ/(|ĝ| + ε) (m̂ = ĝ, √v̂ = |ĝ|; ĝ the clipped gradient, ε = 1e-8), whose
    slope in ĝ is up to 1/ε, so a gradient near zero whose float32 sum over 8 members differs by
    ~1e-10 between the two summation orders (8 at once vs 4 + 4, then the all-reduce) moves its
    weight by up to lr·1e-10/ε = 1e-5, and a weight was seen 2.76e-5 apart. No tolerance bounds that
    without knowing how much the sum's terms cancel. The parallel arithmetic under test (which rows
    a rank takes, that the gradients are all-reduced and averaged) does not depend on the dtype.

    Tolerances, from float64 rounding (u = 2⁻⁵³ ≈ 1.1e-16): a weight's gradient is a sum of at most
    n = 8 members × 32 × 32 pixels = 8192 terms (a conv weight), and any summation order is within
    γ_n·Σ|terms| ≈ n·u·Σ|terms| ≈ 9e-13·Σ|terms| of the exact sum, so the two runs differ by at most
    2e-12·Σ|terms|. GRAD_RTOL = 1e-9 of the tensor's largest gradient allows terms cancelling 500×
    and is still 1e9 below what a real bug gives: a rank that skips the all-reduce has the gradient
    of its own 4 members, a wrong averaging factor (a sum over ranks, or a mean over the local batch
    divided again) k·g with k ≠ 1, both O(|g|) apart. The weights follow through AdamW's step:
    |Δw| ≤ lr·|Δĝ|/ε with |Δĝ| ≤ 2·GRAD_RTOL·max|ĝ| (clipping scales the gradient and its rounding
    alike; max|ĝ| ≤ grad_clip = 1), at most 2e-4 here, below lr = 1e-3, by which a skipped
    all-reduce moves every weight whose gradient changes sign (Adam is scale-invariant, so only the
    gradient check sees a wrong averaging factor).
    """
    script = Path(__file__).with_name("ddp_step.py")
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, str(script), str(tiny_kolmogorov), str(single)], check=True,
                   env=ENV)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script), str(tiny_kolmogorov), str(double)],
                         env=ENV, capture_output=True, text=True)
    assert ddp.returncode == 0, f"torchrun failed:\n{ddp.stdout}\n{ddp.stderr}"
    from safetensors.torch import load_file

    GRAD_RTOL, LR, ADAM_EPS, CLIP = 1e-9, 1e-3, 1e-8, 1.0   # LR and CLIP as ddp_step.py trains
    grads = load_file(str(single / "grads-r0.safetensors"))
    assert grads and all(g.dtype == torch.float64 for g in grads.values())
    for rank in (0, 1):
        other = load_file(str(double / f"grads-r{rank}.safetensors"))
        assert sorted(other) == sorted(grads)
        for key, g in grads.items():
            torch.testing.assert_close(other[key], g, rtol=0, atol=GRAD_RTOL * float(g.abs().max()),
                                       msg=lambda m, key=key, rank=rank: f"gradient {key}, rank {rank}: {m}")
    norm = torch.stack([g.norm() for g in grads.values()]).norm()
    clipped = min(1.0, CLIP / float(norm))
    weight_tol = LR * 2 * GRAD_RTOL * clipped * max(float(g.abs().max()) for g in grads.values()) / ADAM_EPS
    assert weight_tol < LR / 4
    a = load_file(str(single / "train" / "refiner.safetensors"))
    b = load_file(str(double / "train" / "refiner.safetensors"))
    params = [k for k in a if k.startswith("model.")]
    assert params
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=weight_tol)


def failing_emulator_loss(monkeypatch, call: int) -> None:
    """Make the `call`-th emulator loss evaluation (validation at step 0 is the first) raise."""
    from sns_engine.train import losses

    real, calls = losses.emulator_loss, iter(range(1, 10**6))

    def loss(*args, **kwargs):
        if next(calls) == call:
            raise RuntimeError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "emulator_loss", loss)


def test_failure_before_the_first_checkpoint_leaves_no_bundle(tiny_kolmogorov, tmp_path, monkeypatch):
    failing_emulator_loss(monkeypatch, call=3)  # during step 1; the first checkpoint is at step 2
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(TrainConfig(model="emulator", steps=6, batch_size=4, checkpoint_every=2),
              tiny_kolmogorov, tmp_path / "b", quiet=True)
    assert not (tmp_path / "b").exists()


def test_failure_mid_training_leaves_an_unfinished_model_that_resume_finishes(tiny_kolmogorov, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "b"
    cfg = TrainConfig(model="emulator", steps=6, batch_size=4, checkpoint_every=2)
    with monkeypatch.context() as patch:
        failing_emulator_loss(patch, call=5)  # during step 3, after the checkpoint of step 2
        with pytest.raises(RuntimeError, match="simulated failure"):
            train(cfg, tiny_kolmogorov, out, quiet=True)
    bundle = load_bundle(out)
    assert "emulator" not in bundle.models
    with pytest.raises(BundleError, match=r"model emulator is not finished \(trained 2 of 6 steps\); "
                                          r"rerun .*resume=True"):
        bundle.model("emulator")
    train(cfg, tiny_kolmogorov, out, resume=True, quiet=True)
    assert load_bundle(out).model("emulator") is not None
    assert json.loads((out / "train" / "emulator.json").read_text())["step"] == 6


def test_incomplete_data_is_refused_before_anything_is_written(tiny_kolmogorov, tmp_path):
    import shutil

    import zarr

    from sns_engine.data import StoreError

    cut = tmp_path / "cut.zarr"
    shutil.copytree(tiny_kolmogorov, cut)
    root = zarr.open_group(str(cut), mode="r+")
    del root.attrs["normalisation"]
    root["progress"][0] = 20
    with pytest.raises(StoreError, match=r"cut\.zarr is incomplete \(80 of 160 snapshots\); rerun the same"):
        train(TrainConfig(model="emulator", steps=2, batch_size=4), cut, tmp_path / "b", quiet=True)
    assert not (tmp_path / "b").exists()


def test_bundle_records_what_ran_and_is_readable_like_a_new_file(tiny_kolmogorov, tmp_path):
    """bf16 autocast (the default) runs on CUDA only: on the CPU the bundle records false; the
    weights are 0666 less the umask (safetensors alone writes 0600)."""
    import os

    train(TrainConfig(model="emulator", steps=1, batch_size=2, unroll=1), tiny_kolmogorov,
          tmp_path / "b", quiet=True, device="cpu")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert TrainConfig().bf16 is True and config["models"]["emulator"]["train"]["bf16"] is False
    mask = os.umask(0)
    os.umask(mask)
    for name in ("emulator.safetensors", "initial.safetensors", "train/emulator.safetensors"):
        assert (tmp_path / "b" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


@pytest.mark.parametrize("model,setting,message", [
    ("refiner", {"lag": 100}, "lag=100 needs 102 snapshots per trajectory (x_t−lag, x_t and x_t+1), "
                              "but {data} has 40; use lag=38 or less, or generate longer trajectories"),
    ("emulator", {"unroll": 40}, "unroll=40 needs 41 snapshots per trajectory (40 + 1 consecutive "
                                 "frames), but {data} has 40; use unroll=39 or less")])
def test_a_window_longer_than_the_data_is_refused_before_any_work(tiny_kolmogorov, tmp_path, model,
                                                                   setting, message):
    with pytest.raises(TrainingError) as refused:
        train(TrainConfig(model=model, steps=1, batch_size=2, **setting), tiny_kolmogorov,
              tmp_path / "b", quiet=True)
    assert str(refused.value).startswith(message.format(data=tiny_kolmogorov))
    assert not (tmp_path / "b").exists()


def test_heads_of_another_schedule_are_refused_before_any_work(tiny_kolmogorov, tiny_bundle):
    """The tiny bundle's schedule has N = 20 levels (its first model's): a refiner of 1000 would
    train and then never load."""
    before = (tiny_bundle / "config.json").read_text()
    with pytest.raises(TrainingError, match=r"num_levels=1000 differs from the N = 20 levels of the "
                                            r"bundle .*; use num_levels=20 or another out="):
        train(TrainConfig(model="refiner", steps=1, batch_size=2, lag=10), tiny_kolmogorov,
              tiny_bundle, overwrite=True, quiet=True)
    assert (tiny_bundle / "config.json").read_text() == before


def test_warm_start_goes_on_from_another_bundles_model(tiny_kolmogorov, tiny_bundle, tmp_path):
    """init_from: the run starts at the source's step with its weights (with lr = 1e-30 and no
    weight decay they stay the source's), records where it started, and validates there first."""
    from safetensors.torch import load_file

    source = json.loads((tiny_bundle / "config.json").read_text())["models"]["thermalizer"]
    cfg = TrainConfig(model="thermalizer", steps=source["step"] + 3, batch_size=4, lr=1e-30,
                      weight_decay=0.0, num_levels=20, val_every=2, checkpoint_every=2)
    train(cfg, tiny_kolmogorov, tmp_path / "b", init_from=tiny_bundle, quiet=True)
    model = json.loads((tmp_path / "b" / "config.json").read_text())["models"]["thermalizer"]
    assert model["step"] == source["step"] + 3
    assert model["init_from"] == {"bundle": str(tiny_bundle), "sha256": source["sha256"],
                                  "step": source["step"]}
    assert history(tmp_path / "b", "thermalizer")[0]["step"] == source["step"]
    want = load_file(str(tiny_bundle / "thermalizer.safetensors"))
    got = load_file(str(tmp_path / "b" / "thermalizer.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-12) for k in want)


@pytest.mark.parametrize("change, message", [
    (dict(model="refiner", preset="paper", lag=10), "another network"),
    (dict(model="thermalizer", steps=20), "has 20 steps already"),
])
def test_a_warm_start_that_cannot_go_on_is_refused_before_any_work(tiny_kolmogorov, tiny_bundle,
                                                                   tmp_path, change, message):
    cfg = TrainConfig(**{"steps": 30, "batch_size": 4, "num_levels": 20, **change})
    with pytest.raises(TrainingError, match=message):
        train(cfg, tiny_kolmogorov, tmp_path / "b", init_from=tiny_bundle, quiet=True)
    with pytest.raises(TrainingError, match="has no refiner"):
        train(TrainConfig(model="refiner", steps=30, lag=10, num_levels=20), tiny_kolmogorov,
              tmp_path / "c", init_from=tmp_path / "nothing", quiet=True)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_the_embedded_bundle_can_be_trained_on():
    """Its config.json predates U-Net fields with defaults (attention, label_offset): a warm start
    compares the networks with those filled in, as loading the bundle does."""
    from sns_engine.api import DEFAULT_BUNDLE
    from sns_engine.models import model_unet_config
    from sns_engine.train.loop import warm_start_weights

    unet = model_unet_config("refiner", "small", 1, 64, 1000)
    weights, record = warm_start_weights(DEFAULT_BUNDLE, "refiner", unet, 16000)
    shipped = json.loads((Path(DEFAULT_BUNDLE) / "config.json").read_text())["models"]["refiner"]
    assert record["step"] == shipped["step"] and record["sha256"] == shipped["sha256"]
    assert weights.keys() == load_bundle(DEFAULT_BUNDLE).model("refiner").state_dict().keys()


def test_a_model_joining_a_bundle_sees_its_data_in_the_bundles_units(tiny_kolmogorov, tiny_bundle,
                                                                     tmp_path, monkeypatch):
    """Data whose std differs from the bundle's (other data: frames further along the attractor)
    are divided by the bundle's std, the scale its other models and its rollouts use."""
    import shutil

    from sns_engine.data import TrajectoryStore
    from sns_engine.train import loop

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    config = json.loads((bundle / "config.json").read_text())
    own = TrajectoryStore(tiny_kolmogorov).normalisation["std"]
    config["normalisation"]["std"] = [2.5 * own[0]]
    (bundle / "config.json").write_text(json.dumps(config))
    made = []
    monkeypatch.setattr(loop, "FrameWindows", lambda *a, **kw: made.append(FrameWindows(*a, **kw))
                        or made[-1])
    cfg = TrainConfig(model="thermalizer", steps=2, batch_size=4, num_levels=20, val_every=1,
                      checkpoint_every=1)
    train(cfg, tiny_kolmogorov, bundle, overwrite=True, quiet=True)
    assert len(made) == 2 and all(f.std == pytest.approx([2.5 * own[0]]) for f in made)
    first = torch.from_numpy(TrajectoryStore(tiny_kolmogorov).fields[0, 0])   # trajectory 0, t = 0
    torch.testing.assert_close(made[0][0][0], first / (2.5 * own[0]))
    assert load_bundle(bundle).normalisation["std"] == [2.5 * own[0]]
