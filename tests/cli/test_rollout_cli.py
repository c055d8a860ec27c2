"""Rollout, evaluation and plots through the public API and the CLI, on a tiny trained bundle."""

import hashlib
import json
import math
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
from tests.engine.old_stores import as_format_1

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
    assert store.fields.shape == (4, 9, 1, 32, 32)  # the initial states at t = 0, then 8 steps
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
        try:  # the steps whose checkpoint is on disk
            if TrajectoryStore(cut).progress(0) >= kill_after:
                break
        except Exception:  # not created yet
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cli(*args, "--out", cut, "--resume")
    a, b = TrajectoryStore(full), TrajectoryStore(cut)
    np.testing.assert_array_equal(b.fields[:], a.fields[:])
    np.testing.assert_array_equal(b.root["levels"][:], a.root["levels"][:])
    np.testing.assert_array_equal(b.root["moves"][:], a.root["moves"][:])
    np.testing.assert_array_equal(b.root["flags"][:], a.root["flags"][:])


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
    assert b.progress(0) == b.progress(1) == 5  # each rank's checkpoint, in its own group
    assert {"b0", "b1"} <= set(b.root["solver_state"].group_keys())


def test_default_bundle_rollout_as_documented(tmp_path):
    code = ("import sns_engine; r = sns_engine.rollout(batch=8, steps=5); "
            "assert r.states.shape == (8, 5, 1, 64, 64); assert not r.diverged.any(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------- unfinished stores; resuming with a bundle
def main(*argv) -> tuple[int, str]:
    """(exit status, stderr) of `sns-engine argv` run in-process."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from sns_engine import cli as cli_module

    err = StringIO()
    with redirect_stderr(err), redirect_stdout(StringIO()):
        try:
            cli_module.main([str(a) for a in argv])
        except SystemExit as exit_:
            return exit_.code, err.getvalue()
    return 0, err.getvalue()


def failing_rollout(monkeypatch, bundle, out, fail_at: int, **kwargs):
    """A rollout into `out` whose `fail_at`-th engine step raises (checkpoints every 2 steps)."""
    from sns_engine.engine import rollout as engine_module

    real, calls = engine_module.Engine.step, iter(range(1, 10**6))

    def step(self):
        if next(calls) == fail_at:
            raise RuntimeError("simulated failure")
        return real(self)

    monkeypatch.setattr(engine_module.Engine, "step", step)
    with pytest.raises(RuntimeError, match="simulated failure"):
        sns_engine.rollout(bundle, out=out, checkpoint_every=2, quiet=True, **kwargs)
    monkeypatch.setattr(engine_module.Engine, "step", real)


def test_unfinished_store_is_refused_until_resumed_or_asked_for_partially(
        tiny_bundle, tiny_kolmogorov, tmp_path, monkeypatch):
    from sns_engine.data.store import StoreError

    ens = tmp_path / "ens.zarr"
    args = dict(batch=2, steps=8, path="emulator")
    failing_rollout(monkeypatch, tiny_bundle, ens, fail_at=6, **args)  # steps 1-4 checkpointed
    store = TrajectoryStore(ens)
    assert store.written() == 4 and list(store.root["progress"][:]) == [4]
    told = (f"{ens} is incomplete: 4 of 8 rollout steps written (a rollout that was killed, failed "
            "or is still running); finish it by rerunning its rollout with ")
    with pytest.raises(StoreError) as refused:
        sns_engine.evaluate(ens, tiny_kolmogorov, windows=2)
    assert str(refused.value) == (told + "resume=True (--resume), or pass partial=True to evaluate "
                                  "the 4 steps written")
    assert main("evaluate", ens, "--reference", tiny_kolmogorov) == (
        2, f"sns-engine evaluate: error: {told}--resume, or pass --partial to evaluate the 4 steps written\n")
    status, err = main("plot", "snapshots", ens, "-o", tmp_path / "s.png")
    assert status == 2 and err.endswith("or pass --partial to plot what it has written\n")
    assert not (tmp_path / "s.png").exists()
    status, err = main("plot", "all", ens, "--reference", tiny_kolmogorov, "-o", tmp_path / "f")
    assert status == 2 and err.endswith("or pass --partial to plot what it has written\n")
    assert main("plot", "all", ens, "--reference", tiny_kolmogorov, "-o", tmp_path / "f", "--partial",
                "--quiet") == (0, "")
    assert (tmp_path / "f" / "spectra.png").exists() and (tmp_path / "f" / "snapshots.png").exists()

    report = sns_engine.evaluate(ens, tiny_kolmogorov, windows=2, partial=True)
    assert report["complete"] is False and report["snapshots"] == 4
    assert all(math.isfinite(w["spectrum_error"]["energy"]) for w in report["windows"])
    assert main("evaluate", ens, "--reference", tiny_kolmogorov, "--partial", "--quiet")[0] == 0

    sns_engine.rollout(tiny_bundle, out=ens, checkpoint_every=2, resume=True, quiet=True, **args)
    assert TrajectoryStore(ens).incomplete() is None
    assert sns_engine.evaluate(ens, tiny_kolmogorov, windows=2)["complete"] is True


def test_store_of_an_older_format_is_read_and_not_continued(tiny_bundle, tiny_kolmogorov, tmp_path):
    ens = tmp_path / "ens.zarr"
    sns_engine.rollout(tiny_bundle, out=ens, batch=2, steps=4, quiet=True)
    report = sns_engine.evaluate(ens, tiny_kolmogorov, windows=2)
    as_format_1(ens)
    store = TrajectoryStore(ens)
    assert (store.format, store.t0, store.written()) == (1, 0, 4)
    assert sns_engine.evaluate(ens, tiny_kolmogorov, windows=2) == report  # read as it was
    assert main("plot", "snapshots", ens, "-o", tmp_path / "s.png", "--quiet") == (0, "")
    status, err = main("rollout", "--bundle", tiny_bundle, "--out", ens, "--batch", 2, "--steps", 4,
                       "--resume", "--quiet")
    assert status == 2 and err == (f"sns-engine rollout: error: {ens} was written by sns_engine "
                                   f"{sns_engine.__version__} in store format 1 (sns_engine 0.2 to "
                                   "0.3.0), which this sns_engine reads but does not continue; pass "
                                   "--overwrite to roll it out anew\n")
    # sns_engine 0.2.0 recorded no progress: its checkpoints say how far it got
    TrajectoryStore(ens, mode="r+").root["progress"][:] = -1
    assert store.written() == 4 and store.incomplete() is None
    (ens / "engine.safetensors").unlink()
    assert store.written() == 0 and "0 of 4 rollout steps" in store.incomplete()


def test_resume_refuses_another_bundle_or_other_settings(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    ens = tmp_path / "ens.zarr"
    failing_rollout(monkeypatch, tiny_bundle, ens, fail_at=3, batch=2, steps=8, path="emulator")
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    weights = load_file(str(other / "emulator.safetensors"))
    save_file({k: v * 1.01 for k, v in weights.items()}, str(other / "emulator.safetensors"))
    config = json.loads((other / "config.json").read_text())
    digest = hashlib.sha256((other / "emulator.safetensors").read_bytes()).hexdigest()
    config["models"]["emulator"]["sha256"] = digest
    (other / "config.json").write_text(json.dumps(config))
    base = ["rollout", "--out", ens, "--batch", 2, "--steps", 8, "--path", "emulator",
            "--checkpoint-every", 2, "--resume", "--quiet"]
    status, err = main(*base, "--bundle", other)
    assert status == 2 and err.startswith(f"sns-engine rollout: error: {ens} was rolled out with "
                                          "another bundle: its emulator.safetensors had SHA-256 ")
    assert err.endswith("resume it with the bundle it was made with, or pass --overwrite to replace "
                        "it or choose another --out\n")
    status, err = main(*base[:4], 4, *base[5:], "--bundle", tiny_bundle)
    assert (status, err) == (2, f"sns-engine rollout: error: {ens} was made with --batch 2, not --batch 4; "
                                "resume with what it was made with, or pass --overwrite to replace it "
                                "or choose another --out\n")
    status, err = main(*base, "--bundle", tiny_bundle, "--seed", 3)
    assert status == 2 and "was made with --seed 0, not --seed 3" in err
    assert TrajectoryStore(ens).written() == 2   # untouched by the refusals
    assert main(*base, "--bundle", tiny_bundle) == (0, "")
    assert TrajectoryStore(ens).incomplete() is None
