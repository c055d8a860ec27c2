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
    assert a.spec.channel_names == ("q_upper", "q_lower")


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


def run_main(capsys, *args) -> str:
    """`sns-engine ARGS` in this process, expected to fail; returns its one-line error."""
    from sns_engine.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_data_overwrite_refuses_a_plain_directory_and_the_parent(tmp_path, monkeypatch, capsys):
    plain = tmp_path / "mine"
    plain.mkdir()
    (plain / "experiment.csv").write_text("1,2,3")
    tiny = ["data", "kolmogorov", "--trajectories", 1, "--snapshots", 2, *TINY_K, "--quiet"]
    for extra in (["--overwrite"], []):
        err = run_main(capsys, *tiny, "--out", plain, *extra)
        assert f"{plain} is a plain directory, not a sns_engine store, so it will not be deleted" in err
        assert "another --out" in err and "--overwrite" not in err
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    err = run_main(capsys, *tiny, "--out", "..", "--overwrite")
    assert ".. is the working directory or one above it" in err and "will not be deleted" in err
    assert (plain / "experiment.csv").read_text() == "1,2,3" and work.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "work"]


def test_data_overwrite_replaces_its_own_store(tmp_path):
    from sns_engine.cli import main

    out = tmp_path / "k.zarr"
    tiny = ["data", "kolmogorov", "--trajectories", "1", "--out", str(out), "--set", "solver_grid=16",
            "--set", "output_grid=16", "--set", "spinup_steps=10", "--quiet"]
    main([*tiny, "--snapshots", "2"])
    main([*tiny, "--snapshots", "3", "--overwrite"])
    assert TrajectoryStore(out).fields.shape == (1, 3, 1, 16, 16)


def test_diverged_data_run_leaves_a_store_that_readers_refuse(tmp_path, capsys):
    bad = tmp_path / "bad.zarr"
    err = run_main(capsys, "data", "kolmogorov", "--trajectories", 1, "--snapshots", 5, "--out", bad,
                   *TINY_K, "--set", "dt=5.0", "--quiet")
    assert "diverged" in err and f"{bad} is left incomplete" in err and "--overwrite" in err
    err = run_main(capsys, "train", "emulator", "--data", bad, "--out", tmp_path / "bundle", "--quiet")
    assert f"{bad} is incomplete" in err and "generation failed" in err
    assert not (tmp_path / "bundle").exists()
