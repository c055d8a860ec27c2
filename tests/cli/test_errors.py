"""Bad input gives one clear line: the CLI (status 2, one stderr line, no traceback, its own option
spelling) and the API (the exception type and a message naming the parameter), checked up front.

CLI cases run `main` in-process (fast); a few run the real script to see its stderr and status.
"""

import errno
import importlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import sns_engine
from sns_engine import cli
from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.config import ConfigError, ConfigTypeError
from sns_engine.diffusion.paths import PATHS

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--batch", "1", "--steps", "1", "--path", "emulator", "--quiet"]


def _small_initial_states(path, config):
    """Replace the bundle's initial states by 16² ones, recorded with their true checksum."""
    import hashlib

    from safetensors.torch import save_file

    save_file({"states": torch.zeros(4, 1, 16, 16)}, str(path / "initial.safetensors"))
    digest = hashlib.sha256((path / "initial.safetensors").read_bytes()).hexdigest()
    config["initial"].update(sha256=digest, count=4)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Paths the cases refer to as {name}: broken bundles, a plain folder, a file, an ensemble store."""
    root = tmp_path_factory.mktemp("errors")

    def bundle(name, change):
        path = root / name
        shutil.copytree(DEFAULT_BUNDLE, path)
        config = json.loads((path / "config.json").read_text())
        change(path, config)
        (path / "config.json").write_text(json.dumps(config))
        return path

    paths = {
        "bad_json": bundle("bad_json", lambda p, c: None),
        "mismatch": bundle("mismatch", lambda p, c: c["models"]["refiner"]["unet"].update(hidden=32)),
        "no_weights": bundle("no_weights", lambda p, c: (p / "refiner.safetensors").unlink()),
        "emulator_only": bundle("emulator_only", lambda p, c: c["models"].pop("refiner")),
        "no_std": bundle("no_std", lambda p, c: c["normalisation"].pop("std")),
        "bad_heads": bundle("bad_heads", lambda p, c: c["activation"].update(threshold_heads="z")),
        "wrong_grid": bundle("wrong_grid", lambda p, c: c["models"]["refiner"]["unet"].update(grid=32)),
        "bad_initial": bundle("bad_initial", _small_initial_states),
        "plain": root / "plain", "file": root / "file", "ens": root / "ens.zarr", "new": root / "new",
    }
    (paths["bad_json"] / "config.json").write_text("{oops")
    paths["plain"].mkdir()
    (paths["plain"] / "keep.txt").write_text("mine")
    paths["file"].write_text("mine")
    cli.main(["rollout", *TINY, "--out", str(paths["ens"])])
    return paths


def run(argv, **paths):
    """(exit status, stderr) of `sns-engine argv` run in-process."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    err = StringIO()
    with redirect_stderr(err), redirect_stdout(StringIO()):
        try:
            cli.main([a.format(**paths) for a in argv])
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    return status, err.getvalue()


CASES = [
    # rollout: sizes, save_every / steps, settings, choices
    ("batch 0", "rollout --out {new} --batch 0", "--batch: must be a positive integer, got '0'"),
    ("batch not a number", "rollout --out {new} --batch abc", "must be a positive integer, got 'abc'"),
    ("steps 0", "rollout --out {new} --steps 0", "--steps: must be a positive integer"),
    ("save-every > steps", "rollout --out {new} --steps 2 --save-every 5",
     "--save-every 5 is larger than --steps 2, so no state would be saved; use --steps 5 or --save-every 2"),
    ("steps not a multiple", "rollout --out {new} --steps 7 --save-every 3",
     "--steps 7 is not a multiple of --save-every 3, so the last 1 step would not be saved; "
     "use --steps 6 or --steps 9"),
    ("checkpoint-every not a multiple", "rollout --out {new} --steps 4 --save-every 2 --checkpoint-every 3",
     "--checkpoint-every 3 must be a positive multiple of --save-every 2"),
    ("threshold -1", "rollout --out {new} --threshold -1", "--threshold must be 0 or more, got -1"),
    ("noise-limit -1", "rollout --out {new} --noise-limit -1", "--noise-limit must be 0 or more"),
    ("bound 0", "rollout --out {new} --bound 0", "--bound must be positive, got 0.0"),
    ("bound nan", "rollout --out {new} --bound nan", "--bound must be positive, got nan"),
    ("thermalizer stop above start", "rollout --out {new} --thermalizer-stop 20",
     "--thermalizer-stop 20 must be below --thermalizer-start 11"),
    ("unknown path", "rollout --out {new} --path zigzag", "invalid choice: 'zigzag' (choose from 'emulator'"),
    ("unknown backend", "rollout --out {new} --backend foo", "invalid choice: 'foo'"),
    ("seed not an int", "rollout --out {new} --seed abc", "--seed: invalid int value: 'abc'"),
    ("device gpu", "rollout --out {new} --device gpu", "--device must be cpu, cuda or cuda:N, got 'gpu'"),
    ("missing --out", "rollout --batch 1", "the following arguments are required: --out"),
    ("unknown option", "rollout --out {new} --foo", "rollout: error: unrecognized arguments: --foo (see "),
    ("unknown command", "fly", "invalid choice: 'fly'"),
    ("perturb -1", "rollout --out {new} --perturb -1 " + " ".join(TINY), "perturb must be a finite"),
    # rollout: bundles
    ("missing bundle", "rollout --bundle {new} --out {new}.zarr", "is not a bundle (no config.json)"),
    ("corrupt config.json", "rollout --bundle {bad_json} --out {new}.zarr", "config.json is not valid JSON"),
    ("weights not matching config", "rollout --bundle {mismatch} --out {new}.zarr",
     "config.json describes (unet."),
    ("missing weight file", "rollout --bundle {no_weights} --out {new}.zarr",
     "refiner weights refiner.safetensors are missing"),
    ("bundle without refiner", "rollout --bundle {emulator_only} --path left_down --out {new}.zarr",
     "has no refiner (it has ['emulator', 'thermalizer'])"),
    ("bundle without normalisation.std", "rollout --bundle {no_std} --out {new}.zarr",
     "config.json entry normalisation.std is missing; restore the bundle's files or retrain it"),
    ("bundle with unknown heads", "rollout --bundle {bad_heads} --out {new}.zarr",
     "config.json entry activation.threshold_heads is 'z', not one of ('x', 'either')"),
    ("bundle network of another grid", "rollout --bundle {wrong_grid} --out {new}.zarr",
     "config.json entry models.refiner.unet.grid is 32, but the system and schedule need 64"),
    ("bundle initial states of another grid", "rollout --bundle {bad_initial} --out {new}.zarr",
     "initial.safetensors does not hold finite initial states (K, 1, 64, 64) ('states' is [4, 1, 16, 16])"),
    # rollout: output location
    ("out under a file", "rollout --out {file}/ens.zarr", "not a directory: "),
    ("out is a plain folder", "rollout --out {plain}", "is a plain directory, not a sns_engine store"),
    ("overwrite a plain folder", "rollout --out {plain} --overwrite", "will not be deleted or written into"),
    ("existing store", "rollout --out {ens}",
     "exists; pass --resume to continue it or --overwrite to replace it"),
    ("resume with other steps", "rollout --out {ens} --resume --steps 2", "was made with"),
    ("resume with another threshold", "rollout --out {ens} --resume " + " ".join(TINY) + " --threshold 5",
     "threshold"),
    # data
    ("unknown system", "data lorenz --out {new}", "unknown system 'lorenz'; choose one of kolmogorov, qg"),
    ("unknown preset", "data kolmogorov --preset huge --out {new}", "unknown preset 'huge'"),
    ("snapshots 0", "data kolmogorov --snapshots 0 --out {new}", "--snapshots: must be a positive integer"),
    ("--set non-numeric", "data kolmogorov --set dt=abc --out {new}", "dt must be a number, got str 'abc'"),
    ("--set float for an int", "data kolmogorov --set spinup_steps=1.5 --out {new}",
     "spinup_steps must be an int, got float 1.5"),
    ("--set unknown key", "data kolmogorov --set foo=1 --out {new}", "unknown kolmogorov parameter 'foo'"),
    ("--set without =", "data kolmogorov --set dt --out {new}", "--set expects KEY=VALUE, got 'dt'"),
    ("--set negative dt", "data kolmogorov --set dt=-1 --out {new}", "dt must be positive, got -1.0"),
    ("--set dt=inf", "data qg --set dt=inf --out {new}", "QGParams.dt must be finite, got inf; pass a "
     "finite value"),
    ("--set nan", "data kolmogorov --set reynolds=nan --out {new}",
     "KolmogorovParams.reynolds must be finite, got nan"),
    ("data: seed -5", "data kolmogorov --seed -5 --out {new}", "error: --seed must be 0 or more, got -5"),
    ("rollout: seed -5", "rollout --out {new} --seed -5", "error: --seed must be 0 or more, got -5"),
    ("rollout: seed 2**32", "rollout --out {new} --seed 4294967296",
     "error: --seed must be below 2**32 = 4294967296, got 4294967296"),
    ("train: seed -5", "train emulator --data {ens} --out {new} --seed -5",
     "error: --seed must be 0 or more, got -5"),
    ("calibrate: seed -5", "calibrate --data {ens} --seed -5 --out {new}",
     "error: --seed must be 0 or more, got -5"),
    ("study: seed -5", "study kolmogorov --out {new} --seed -5",
     "error: study --seed must be an integer in [0, 2**32 − 2) (the reference and control stores use "
     "seed + 1 and seed + 2), got -5"),
    ("data into a rollout store", "data kolmogorov --trajectories 1 --snapshots 2 --out {ens}",
     "was made with"),
    # train
    ("train: missing data", "train emulator --data {new}.zarr --out {new}", "new.zarr does not exist; "
     "check the path, or generate the store first"),
    ("train: data is a plain folder", "train emulator --data {plain} --out {new}",
     "is not a sns_engine store"),
    ("train: resume without a checkpoint", "train emulator --data {ens} --out {new} --resume",
     "nothing to resume"),
    ("train: batch-size 0", "train emulator --data {ens} --out {new} --batch-size 0",
     "--batch-size: must be a positive integer"),
    ("train: lag beyond the data", "train refiner --data {ens} --out {new} --lag 100",
     "--lag 100 needs 102 snapshots per trajectory (x_t−lag, x_t and x_t+1), but "),
    ("train: lr -1", "train emulator --data {ens} --out {new} --lr -1", "--lr must be positive and finite"),
    ("train: val-fraction 1.5", "train emulator --data {ens} --out {new} --val-fraction 1.5",
     "--val-fraction must be in (0, 1), got 1.5"),
    ("train: unknown U-Net preset", "train emulator --data {ens} --out {new} --preset huge",
     "invalid choice: 'huge'"),
    ("train: unknown model", "train diffusion --data {ens} --out {new}", "invalid choice: 'diffusion'"),
    # evaluate, plot
    ("evaluate: missing store", "evaluate {new}.zarr --reference {ens}", "new.zarr does not exist"),
    ("rollout: missing --initial", "rollout --out {new}.zarr --initial {new}/states.zarr",
     "new/states.zarr does not exist; check the path, or generate the store first"),
    ("evaluate: windows 0", "evaluate {ens} --reference {ens} --windows 0", "must be a positive integer"),
    ("plot all without reference", "plot all {ens} -o {new}", "plot all needs --reference"),
    ("plot: not a store", "plot spectrum {plain} -o {new}.png", "is not a sns_engine store"),
    # study (refused before any work)
    ("study: no system", "study --out {new}", "name the system (kolmogorov or qg) or pass --recipe"),
    ("study: unknown method", "study kolmogorov --out {new} --methods zigzag",
     "method 'zigzag': unknown path 'zigzag'"),
    ("study: --train-set non-numeric", "study kolmogorov --out {new} --train-set batch_size=abc",
     "batch_size must be an int, got str 'abc'"),
    ("study: --rollout-set threshold -1", "study kolmogorov --out {new} --rollout-set threshold=-1",
     "threshold must be 0 or more, got -1"),
    ("study: --set non-numeric", "study kolmogorov --out {new} --set dt=abc", "dt must be a number"),
    ("study: missing recipe", "study --recipe {new}.json --out {new}", "no such file or directory: "),
]


@pytest.mark.parametrize("argv,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(ws, argv, phrase):
    status, err = run(argv.split(), **ws)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "error: " in err
    assert phrase in err


@pytest.mark.parametrize("argv", [
    "data kolmogorov --seed -5 --trajectories 1 --snapshots 2 --out {out}",
    "data qg --set dt=inf --trajectories 1 --snapshots 2 --out {out}",
    "rollout --seed -5 --batch 1 --steps 1 --path emulator --out {out}",
    "train emulator --data {ens} --out {out} --seed -5 --steps 1",
    "calibrate --data {ens} --seed -5 --out {out}",
    "study kolmogorov --seed -5 --out {out}"])
def test_refused_before_any_work_leaves_nothing(ws, tmp_path, argv):
    status, err = run(argv.split(), out=str(tmp_path / "out.zarr"), ens=str(ws["ens"]))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no *.zarr.creating


def test_divergence_says_what_ran_and_what_was_changed(tmp_path):
    from sns_engine.systems import get_system

    assert get_system("kolmogorov", "cpu").divergence_fix() == (
        "with dt=0.001; lower dt or raise solver_grid (now 128)")
    assert get_system("kolmogorov", "cpu", dt=0.01, spinup_steps=5).divergence_fix() == (
        "with dt=0.01 (changed from the cpu preset: dt was 0.001); lower dt or raise solver_grid "
        "(now 128)")
    assert get_system("qg", "cpu", rek=1e-3, workers=2).divergence_fix() == (
        "with dt=3600.0, rek=0.001 (changed from the cpu preset: rek was 7e-08); lower dt or revert "
        "the changed parameters")
    bad = tmp_path / "bad.zarr"
    status, err = run(["data", "kolmogorov", "--trajectories", "2", "--snapshots", "3", "--out", str(bad),
                       "--set", "solver_grid=16", "--set", "output_grid=16", "--set", "spinup_steps=10",
                       "--set", "reynolds=1e9", "--set", "drag=0", "--set", "dt=2.0", "--quiet"])
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("sns-engine data: error: kolmogorov: trajectory 0 diverged (NaN/Inf) in its "
                          "spin-up (solver steps 1 to 10) with dt=2.0, reynolds=1000000000.0, "
                          "solver_grid=16, drag=0.0 (changed from the cpu preset: dt was 0.001, "
                          "reynolds was 1000.0, solver_grid was 128, drag was 0.1); lower dt or revert "
                          "the changed parameters; ")


@pytest.mark.parametrize("name", ["no_std", "bad_heads", "wrong_grid", "bad_initial"])
def test_broken_bundle_is_refused_before_the_store_is_made(ws, tmp_path, name):
    out = tmp_path / "ens.zarr"
    status, err = run(["rollout", "--bundle", str(ws[name]), "--out", str(out), *TINY])
    assert status == 2 and f"bundle {ws[name]}: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["rollout --out {new}", "train emulator --data {ens} --out {new}",
                                     "study kolmogorov --out {new}"])
def test_cuda_without_cuda(ws, command):
    status, err = run([*command.split(), "--device", "cuda"], **ws)
    assert status == 2
    assert err.strip().endswith("error: CUDA is not available on this machine; use --device cpu")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out(ws, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, err = run(["rollout", *TINY, "--out", str(locked / "ens.zarr")])
    finally:
        locked.chmod(0o700)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "permission denied: " in err


def _raising(error: BaseException):
    def command(args):
        raise error
    return command


@pytest.mark.parametrize("command,error,status,message", [
    ("train", RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 4400000000000 bytes."), 2,
     "sns-engine train: error: out of memory allocating 4400.0 GB; use a smaller --batch-size"),
    ("train", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB)"), 2,
     "sns-engine train: error: out of memory allocating 2.00 GiB; use a smaller --batch-size"),
    ("rollout", MemoryError(), 2, "sns-engine rollout: error: out of memory; use a smaller --batch"),
    ("rollout", OSError(errno.ENOSPC, "No space left on device", "/full/ens.zarr/fields/c/0"), 2,
     "sns-engine rollout: error: no space left on device writing /full/ens.zarr/fields/c/0"),
    ("rollout", PermissionError(errno.EACCES, "Permission denied", "/ro/ens.zarr"), 2,
     "sns-engine rollout: error: permission denied: /ro/ens.zarr"),
    ("rollout", KeyboardInterrupt(), 130,
     "sns-engine rollout: error: interrupted; rerun with --resume to continue"),
    ("train", KeyboardInterrupt(), 130,
     "sns-engine train: error: interrupted; rerun with --resume to continue"),
    ("data", KeyboardInterrupt(), 130,
     "sns-engine data: error: interrupted; rerun the same command to continue"),
    ("rollout", KeyError("levels"), 2,
     "sns-engine rollout: error: unexpected KeyError: 'levels' (rerun with --debug for the traceback)"),
])
def test_machine_failures_are_one_line(ws, monkeypatch, command, error, status, message):
    monkeypatch.setattr(cli.commands, f"cmd_{command}", _raising(error))
    argv = {"train": "train emulator --data {ens} --out {new}", "rollout": "rollout --out {new}",
            "data": "data kolmogorov --out {new}"}[command]
    got, err = run(argv.split(), **ws)
    assert (got, err) == (status, message + "\n")


def test_writer_failure_names_the_disk_error(ws, monkeypatch):
    """The writer thread's OSError arrives wrapped in a RuntimeError; the line says what it was."""
    def full(args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("writing ens.zarr failed: [Errno 28] No space left on device") from err

    monkeypatch.setattr(cli.commands, "cmd_rollout", full)
    assert run(["rollout", "--out", "x.zarr"])[1].endswith("error: no space left on device writing x.zarr\n")
    monkeypatch.setattr(cli.commands, "cmd_evaluate", full)
    assert run(["evaluate", "e.zarr", "--reference", "r.zarr", "-o", "report.json"])[1].endswith(
        "error: no space left on device writing report.json\n")


def test_debug_shows_the_exception(ws, monkeypatch):
    with pytest.raises(ConfigError, match="threshold must be 0 or more"):
        cli.main(["--debug", "rollout", "--out", str(ws["new"]), "--threshold", "-1"])
    with pytest.raises(ConfigError):
        cli.main(["rollout", "--out", str(ws["new"]), "--threshold", "-1", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ConfigError):
        cli.main(["rollout", "--out", str(ws["new"]), "--threshold", "-1"])


def test_real_script_one_line_and_debug_traceback(tmp_path):
    args = [sys.executable, "-m", "sns_engine.cli", "rollout", "--out", str(tmp_path / "e.zarr"),
            "--steps", "7", "--save-every", "3"]
    plain = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.splitlines() == ["sns-engine rollout: error: --steps 7 is not a multiple of "
                                         "--save-every 3, so the last 1 step would not be saved; use "
                                         "--steps 6 or --steps 9"]
    debug = subprocess.run(args, env={**ENV, cli.DEBUG_ENV: "1"}, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_ctrl_c_during_rollout(tmp_path):
    out = tmp_path / "e.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "sns_engine.cli", "rollout", "--batch", "1",
                             "--steps", "100000", "--path", "emulator", "--quiet", "--out", str(out)],
                            env=ENV, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background inherits SIGINT ignored: undo that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:  # interrupt once the rollout is stepping: its first resume checkpoint exists
        deadline = time.time() + 180
        while not (out / "solver_state" / "b0").exists() and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:  # a failed wait must not leave a 100 000-step rollout running
        proc.kill()
    assert proc.returncode == 130
    assert err.splitlines() == ["sns-engine rollout: error: interrupted; rerun with --resume to continue"]


# ------------------------------------------------------------------------------------------- API

@pytest.mark.parametrize("kwargs,error,message", [
    ({"seed": "abc"}, TypeError, "seed must be an int, got str 'abc'"),
    ({"batch": 2.5}, TypeError, "batch must be an int, got float 2.5"),
    ({"renoise": 1}, TypeError, r"renoise must be a bool \(True or False\), got int 1"),
    ({"batch": 0}, ConfigError, "batch must be positive, got 0"),
    ({"steps": 2, "save_every": 5}, ConfigError, "save_every=5 is larger than steps=2"),
    ({"steps": 7, "save_every": 3}, ConfigError, "steps=7 is not a multiple of save_every=3"),
    ({"threshold": -1}, ConfigError, "threshold must be 0 or more, got -1"),
    ({"path": "zigzag"}, ValueError, r"unknown path 'zigzag'; choose one of \['acdm'"),
    ({"backend": "foo"}, ValueError, "unknown backend 'foo'"),
    ({"device": "gpu"}, ConfigError, "device must be cpu, cuda or cuda:N, got 'gpu'"),
    ({"resume": True}, ConfigError, r"resume=True applies to a store; pass out= too"),
    ({"engine": "reference", "out": "x.zarr"}, ConfigError, "engine='reference' keeps results in memory"),
    ({"batch": 10**6, "steps": 10**5}, ConfigError, "the in-memory result needs about .* GB .* pass out="),
    ({"batch": 2, "initial": torch.zeros(2, 1, 16, 16)}, ValueError,
     r"initial must have shape \(2, 1, 64, 64\)"),
    ({"batch": 1, "initial": torch.full((1, 1, 64, 64), float("nan"))}, ValueError, "NaN"),
])
def test_api_rollout_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        sns_engine.rollout(**{"steps": 1, "quiet": True, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_api_cuda_without_cuda():
    for call in (lambda: sns_engine.rollout(device="cuda"),
                 lambda: sns_engine.load_bundle(DEFAULT_BUNDLE, "cuda"),
                 lambda: sns_engine.train("emulator", "x.zarr", "b", device="cuda:0")):
        with pytest.raises(ConfigError, match=r"CUDA is not available on this machine; use device='cpu'"):
            call()


def test_api_other_functions_refuse_bad_arguments(tmp_path):
    with pytest.raises(ConfigTypeError, match="seed must be an int, got str 'a'"):
        sns_engine.train("emulator", tmp_path / "x.zarr", tmp_path / "b", seed="a")
    with pytest.raises(ConfigError, match="unknown model 'diffusion'"):
        sns_engine.train("diffusion", tmp_path / "x.zarr", tmp_path / "b")
    with pytest.raises(TypeError, match="seed must be an int, got str 'abc'"):
        sns_engine.generate_data("kolmogorov", tmp_path / "d.zarr", 1, 2, seed="abc")
    with pytest.raises(TypeError, match="dt must be a number, got str 'abc'"):
        sns_engine.generate_data("kolmogorov", tmp_path / "d.zarr", 1, 2, overrides={"dt": "abc"})
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "b").exists()


# -------------------------------------------------------------------------------- documentation

def test_public_functions_have_explicit_documented_signatures():
    for fn in (sns_engine.rollout, sns_engine.load_bundle, sns_engine.generate_data, sns_engine.train,
               sns_engine.evaluate):
        params = inspect.signature(fn).parameters
        assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()), fn
        from sns_engine.config import param_help

        assert sorted(param_help(fn)) == sorted(params), fn.__name__
        if "quiet" in params:
            assert params["quiet"].default is False
    importlib.import_module("sns_engine.train.loop")  # a submodule import must not replace the function
    assert callable(sns_engine.train)


def test_facade_defaults_match_the_implementations():
    from sns_engine.bundle import load_bundle
    from sns_engine.diagnostics.evaluate import evaluate
    from sns_engine.generation import generate

    for facade, impl in ((sns_engine.generate_data, generate), (sns_engine.evaluate, evaluate),
                         (sns_engine.load_bundle, load_bundle)):
        ours, theirs = inspect.signature(facade).parameters, inspect.signature(impl).parameters
        shared = (set(ours) & set(theirs)) - {"quiet"}
        assert {n: ours[n].default for n in shared} == {n: theirs[n].default for n in shared}


def test_every_option_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    assert sorted(sub.choices) == ["calibrate", "compare", "data", "evaluate", "import-authors",
                                   "plot", "rollout", "study", "train"]
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help and len(action.help) > 8, (name, action.dest)
    text = sub.choices["rollout"].format_help()
    assert all(path in text for path in PATHS) and "(default: 64)" in text and "--no-renoise" in text
    assert "(default: 5e-05)" in sub.choices["train"].format_help()


@pytest.mark.parametrize("message,expected", [
    ("x exists; pass resume=True (--resume) to continue it or overwrite=True (--overwrite)",
     "x exists; pass --resume to continue it or --overwrite"),
    ("use steps=6 or steps=9", "use --steps 6 or --steps 9"),
    ("save_every must be positive", "--save-every must be positive"),
    ("pass renoise=False or graphs=True", "pass --no-renoise or --graphs"),
    ("unknown path='zigzag'; choose another out=", "unknown --path zigzag; choose another --out"),
    ("use --rollout-set threshold=5", "use --rollout-set threshold=5"),
    ("checkpoint_every_x=3 and timeout=3", "checkpoint_every_x=3 and timeout=3"),
])
def test_api_words_become_options(message, expected):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    assert cli.cli_message(message, sub.choices["rollout"]) == expected


@pytest.mark.parametrize("argv", [["rollout", "--out", ""], ["data", "kolmogorov", "--out", ""],
                                  ["train", "emulator", "--data", "", "--out", "b"],
                                  ["evaluate", "", "--reference", "r.zarr"],
                                  ["plot", "spectrum", "s.zarr", "-o", ""]])
def test_an_empty_path_is_named(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = run(argv)
    assert status == 2 and "must not be an empty path, got ''; name a file or folder" in err
    assert "--out must" in err or "--data must" in err or "ensemble must" in err or "--output must" in err
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"sns-engine {sns_engine.__version__}\n"


def test_help_shows_each_default_once():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    text = " ".join(sub.choices["calibrate"].format_help().split())
    assert text.count("(default: [1, 10, 100, 1000])") == 1 and "(default (1, 10" not in text
    from sns_engine.config import param_help

    assert param_help(sns_engine.evaluate)["windows"] == "time windows the metrics are reported for"
