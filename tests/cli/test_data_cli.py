"""`sns-engine data` and `sns-engine plot` with the real solvers, as a user runs them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sns_engine.data import TrajectoryStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_K = ["--set", "solver_grid=32", "--set", "output_grid=32", "--set", "spinup_steps=50"]


def cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "sns_engine.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, check=check)


def test_kolmogorov_same_seed_same_data(tiny_kolmogorov, tmp_path):
    again = tmp_path / "again.zarr"
    cli("data", "kolmogorov", "--trajectories", 4, "--snapshots", 40, "--out", again,
        "--set", "solver_grid=32", "--set", "output_grid=32", "--set", "spinup_steps=200",
        "--trajectory-batch", 4, "--time-chunk", 10, "--quiet")
    a = TrajectoryStore(tiny_kolmogorov).fields[:]
    np.testing.assert_array_equal(TrajectoryStore(again).fields[:], a)
    assert a.std() > 0.1 and np.isfinite(a).all()


def test_qg_tiny_dataset_reproducible(tmp_path):
    args = ["data", "qg", "--trajectories", 2, "--snapshots", 12, "--time-chunk", 4,
            "--set", "spinup_steps=200", "--quiet"]
    cli(*args, "--out", tmp_path / "a.zarr")
    cli(*args, "--out", tmp_path / "b.zarr")
    a, b = TrajectoryStore(tmp_path / "a.zarr"), TrajectoryStore(tmp_path / "b.zarr")
    assert a.fields.shape == (2, 12, 2, 64, 64)
    np.testing.assert_array_equal(a.fields[:], b.fields[:])
    assert a.spec.channel_names == ("q1", "q2") or len(a.spec.channel_names) == 2


def test_kill_during_generation_then_resume_equals_uninterrupted(tmp_path):
    args = ["data", "kolmogorov", "--trajectories", 4, "--snapshots", 60, "--trajectory-batch", 2,
            "--time-chunk", 5, *TINY_K, "--quiet"]
    full = tmp_path / "full.zarr"
    cli(*args, "--out", full)
    cut = tmp_path / "cut.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "sns_engine.cli", *map(str, args), "--out", str(cut)],
                            env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cut / "progress").exists():
            progress = TrajectoryStore(cut).root["progress"][:]
            if progress.max() >= 10:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = TrajectoryStore(cut)
    assert not partial.complete
    cli(*args, "--out", cut)
    np.testing.assert_array_equal(TrajectoryStore(cut).fields[:], TrajectoryStore(full).fields[:])


@pytest.mark.parametrize("args,message", [
    (["data", "lorenz", "--out", "x.zarr"], "unknown system 'lorenz'"),
    (["data", "kolmogorov", "--preset", "huge", "--out", "x.zarr"], "unknown preset 'huge'"),
    (["data", "kolmogorov", "--snapshots", "0", "--out", "x.zarr"], "must be a positive integer"),
    (["data", "kolmogorov", "--set", "dt=-1", "--out", "x.zarr"], "dt must be positive"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "sns_engine.cli", *args], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    lines = result.stderr.strip().splitlines()
    assert sum("error:" in line for line in lines) == 1 and "error:" in lines[-1]  # usage + one line
    assert "Traceback" not in result.stderr


def test_existing_store_with_other_parameters_is_kept(tiny_kolmogorov):
    before = TrajectoryStore(tiny_kolmogorov).fields[:]
    result = cli("data", "kolmogorov", "--trajectories", 4, "--snapshots", 41, "--out",
                 tiny_kolmogorov, *TINY_K, check=False)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    np.testing.assert_array_equal(TrajectoryStore(tiny_kolmogorov).fields[:], before)


def test_unstable_dt_is_reported(tmp_path):
    result = cli("data", "kolmogorov", "--trajectories", 1, "--snapshots", 5, "--out",
                 tmp_path / "bad.zarr", *TINY_K, "--set", "dt=5.0", "--quiet", check=False)
    assert result.returncode == 2
    assert "diverged" in result.stderr and "dt" in result.stderr


def test_not_a_store(tmp_path):
    (tmp_path / "folder").mkdir()
    result = cli("plot", "spectrum", tmp_path / "folder", "-o", tmp_path / "s.png", check=False)
    assert result.returncode == 2 and "not a sns_engine store" in result.stderr


def test_plot_spectrum_writes_png(tiny_kolmogorov, tmp_path):
    out = tmp_path / "spectrum.png"
    cli("plot", "spectrum", tiny_kolmogorov, "-o", out, "--quiet")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
