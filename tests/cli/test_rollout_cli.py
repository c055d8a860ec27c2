"""Rollout, evaluation and plots through the public API and the CLI, on a tiny trained bundle."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import sns_engine
from sns_engine.data import TrajectoryStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "sns_engine.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, check=check)


@pytest.mark.parametrize("path", ["emulator", "left_down", "thermalizer"])
def test_api_rollout_in_memory(tiny_bundle, path):
    r = sns_engine.rollout(tiny_bundle, batch=3, steps=4, path=path, threshold=0)
    assert r.states.shape == (3, 4, 1, 32, 32)
    assert torch.isfinite(r.states).all()
    assert r.levels.shape == (3, 4, 2) and r.moves.shape == (3, 4)
    assert r.flags.shape == (3,)
    if path == "left_down":
        assert (r.levels >= 0).all()
        # the walk length is exactly n̂_y + n̂_x for every refined member
        torch.testing.assert_close(r.moves, r.levels.sum(-1))


def test_bad_initial_and_unknown_path(tiny_bundle):
    with pytest.raises(ValueError, match=r"initial must have shape \(2, 1, 32, 32\)"):
        sns_engine.rollout(tiny_bundle, batch=2, steps=1, initial=torch.zeros(2, 1, 16, 16))
    bad = torch.randn(2, 1, 32, 32)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sns_engine.rollout(tiny_bundle, batch=2, steps=1, initial=bad)
    with pytest.raises(ValueError, match="unknown path 'zigzag'"):
        sns_engine.rollout(tiny_bundle, batch=2, steps=1, path="zigzag")


def test_cli_rollout_evaluate_plot(tiny_bundle, tiny_kolmogorov, tmp_path):
    ens = tmp_path / "ens.zarr"
    cli("rollout", "--bundle", tiny_bundle, "--batch", 4, "--steps", 8, "--out", ens, "--quiet")
    store = TrajectoryStore(ens)
    assert store.fields.shape == (4, 8, 1, 32, 32)
    assert np.isfinite(store.fields[:]).all()
    report_file = tmp_path / "report.json"
    cli("evaluate", ens, "--reference", tiny_kolmogorov, "-o", report_file, "--windows", 2, "--quiet")
    report = json.loads(report_file.read_text())
    assert len(report["windows"]) == 2
    assert all(w["spectrum_error"]["energy"] >= 0 for w in report["windows"])
    assert len(report["stability"]["times"]) == 4
    figures = tmp_path / "figures"
    cli("plot", "all", ens, "--reference", tiny_kolmogorov, "-o", figures, "--quiet")
    names = sorted(p.name for p in figures.glob("*.png"))
    assert names == ["autocorrelation_stability.png", "error_over_time.png", "levels.png",
                     "snapshots.png", "spectra.png"]
    existing = cli("rollout", "--bundle", tiny_bundle, "--batch", 4, "--steps", 8, "--out", ens,
                   check=False)
    assert existing.returncode == 2 and "--resume" in existing.stderr


def test_rollout_resumes_after_kill(tiny_bundle, tmp_path):
    args = ["rollout", "--bundle", tiny_bundle, "--batch", 3, "--steps", 40, "--checkpoint-every", 2,
            "--quiet"]
    full = tmp_path / "full.zarr"
    cli(*args, "--out", full)
    cut = tmp_path / "cut.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "sns_engine.cli", *map(str, args), "--out", str(cut)],
                            env=ENV)
    kill_after = int(np.random.default_rng().integers(4, 30))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpt = cut / "engine.safetensors"
        if ckpt.exists():
            from safetensors.torch import load_file

            try:
                if int(load_file(str(ckpt))["next_step"]) >= kill_after:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cli(*args, "--out", cut, "--resume")
    a, b = TrajectoryStore(full), TrajectoryStore(cut)
    np.testing.assert_array_equal(b.fields[:], a.fields[:])
    np.testing.assert_array_equal(b.root["levels"][:], a.root["levels"][:])
    np.testing.assert_array_equal(b.root["moves"][:], a.root["moves"][:])


def test_two_rank_sharded_rollout_equals_single_process(tiny_bundle, tmp_path):
    args = ["rollout", "--bundle", tiny_bundle, "--batch", 4, "--steps", 5, "--quiet"]
    single, sharded = tmp_path / "single.zarr", tmp_path / "sharded.zarr"
    cli(*args, "--out", single)
    # --standalone: the rendezvous takes a free port (a fixed one collides with parallel runs)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "sns_engine.cli", *map(str, args), "--out",
                          str(sharded)], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, f"torchrun failed:\n{run.stdout}\n{run.stderr}"
    a, b = TrajectoryStore(single), TrajectoryStore(sharded)
    np.testing.assert_allclose(b.fields[:], a.fields[:], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(b.root["levels"][:], a.root["levels"][:])
    assert b.root["levels"].chunks[0] == 2  # each rank owns whole chunks
    assert (b.path / "engine.safetensors").exists() and (b.path / "engine-r1.safetensors").exists()


def test_default_bundle_rollout_as_documented(tmp_path):
    code = ("import sns_engine; r = sns_engine.rollout(batch=8, steps=5); "
            "assert r.states.shape == (8, 5, 1, 64, 64); assert not r.diverged.any(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "ok"
