"""rollout(processes=N) (engine/processes.py): the members split over spawned worker processes,
each share rolled out bit for bit as alone in one process, in memory and in a store; a failed
worker is named and its store resumes; bad input is refused before any work."""

import numpy as np
import pytest
import torch

import sns_engine
from sns_engine import bundle as bundle_module
from sns_engine.config import ConfigError
from sns_engine.data import TrajectoryStore
from sns_engine.engine import job as calls
from sns_engine.engine.processes import WorkerError
from sns_engine.engine.rollout import RolloutResult
from tests.engine import spawned

PER_MEMBER = ("states", "flags", "flagged_at", "levels", "moves")
STORED = ("levels", "moves", "flags", "flagged_at")


def _assert_same(a, b, exact: bool) -> None:
    """Two rollouts' (RolloutResult, or ensemble store paths) members equal: everything bit for bit,
    or (`exact` False) all but the states, which are within 1e-5 of their scale."""
    if isinstance(a, RolloutResult):
        values = [{name: getattr(r, name).numpy() for name in PER_MEMBER} for r in (a, b)]
    else:
        values = [{"states": s.fields[:], **{name: s.root[name][:] for name in STORED}}
                  for s in map(TrajectoryStore, (a, b))]
    for name in values[0]:  # flagged_at: NaN where never flagged, equal here
        if exact or name != "states":
            np.testing.assert_array_equal(values[1][name], values[0][name], strict=True, err_msg=name)
        else:
            scale = float(np.abs(values[0][name]).max())
            np.testing.assert_allclose(values[1][name], values[0][name], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("path", ["emulator", "left_down"])
def test_two_processes_roll_out_every_member_as_one(tiny_bundle, tmp_path, path):
    """Each worker's members exactly as a rollout of them alone (a member depends only on its id),
    in memory and in a store. Against one process of all four, the emulator path is the same bit
    for bit; a refined path's levels, moves and flags are, its states at least to float rounding:
    the packed walks batch a member's network calls with whichever members walk with it, and
    oneDNN's convs need not be batch-invariant on every CPU (as with threads=,
    test_parallel_chunks.py)."""
    args = dict(batch=4, steps=3, path=path, quiet=True)
    two = sns_engine.rollout(tiny_bundle, processes=2, **args)
    alone = [sns_engine.rollout(tiny_bundle, threads=1, **{**args, "batch": 2, "member_offset": first})
             for first in (0, 2)]
    for name in PER_MEMBER:
        assert torch.equal(getattr(two, name), torch.cat([getattr(a, name) for a in alone])), name
    one = sns_engine.rollout(tiny_bundle, threads=1, **args)
    _assert_same(one, two, exact=path == "emulator")
    for name in ("physical_steps", "useful_member_forwards", "emulator_member_forwards",
                 "level_pass_members"):  # counted per member: the same over any split
        assert getattr(two.stats, name) == getattr(one.stats, name), name
    assert two.stats.useful_flops == one.stats.useful_flops

    sns_engine.rollout(tiny_bundle, threads=1, out=tmp_path / "one.zarr", **args)
    stored = sns_engine.rollout(tiny_bundle, processes=2, out=tmp_path / "two.zarr", **args)
    _assert_same(tmp_path / "one.zarr", tmp_path / "two.zarr", exact=path == "emulator")
    store = TrajectoryStore(tmp_path / "two.zarr")
    assert torch.equal(torch.from_numpy(store.fields[:, 1:]), two.states)  # t = 0: the initial states
    assert store.root["flags"].chunks[0] == 2  # a chunk per worker
    assert stored.store == str(tmp_path / "two.zarr") and stored.states is None
    for name in ("flags", "flagged_at", "levels", "moves"):
        assert torch.equal(getattr(stored, name), getattr(two, name)), name


def test_a_failed_worker_is_named_and_its_store_resumes(tiny_bundle, tmp_path, monkeypatch):
    """Worker 1 fails before step 2: worker 0 finishes, worker 1's checkpoint of 2 steps stays, and
    a resume rolls out only worker 1's last 2 steps, to the store of an unbroken run."""
    args = dict(batch=4, steps=4, checkpoint_every=1, processes=2, quiet=True)
    sns_engine.rollout(tiny_bundle, out=tmp_path / "full.zarr", **args)
    cut = tmp_path / "cut.zarr"
    monkeypatch.setattr(calls, "worker_part", spawned.failing_part)
    with pytest.raises(WorkerError, match=r"^rollout worker 1 of 2 \(members 2\.\.3\) failed: "
                                          r"RuntimeError: injected failure before step 2\n") as failed:
        sns_engine.rollout(tiny_bundle, out=cut, **args)
    assert "injected failure" in failed.value.worker_traceback
    store = TrajectoryStore(cut)
    assert (store.progress(0), store.progress(1)) == (4, spawned.FAIL_AT)
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"written by 2 process\(es\) of 2 members; resume it "
                                              r"with as many: processes=2, or torchrun"):
        sns_engine.rollout(tiny_bundle, out=cut, resume=True, **{**args, "processes": 1})
    resumed = sns_engine.rollout(tiny_bundle, out=cut, resume=True, **args)
    assert resumed.stats.physical_steps == 4 - spawned.FAIL_AT  # worker 0 had nothing left
    _assert_same(tmp_path / "full.zarr", cut, exact=True)


def test_a_failed_worker_in_memory_stops_the_call(tiny_bundle, monkeypatch):
    monkeypatch.setattr(calls, "worker_part", spawned.failing_part)
    with pytest.raises(WorkerError, match=r"rollout worker 1 of 2 \(members 12\.\.13\) failed"):
        sns_engine.rollout(tiny_bundle, batch=4, steps=3, path="emulator", member_offset=10,
                           processes=2, quiet=True)


@pytest.mark.parametrize("args,env,error,message", [
    (dict(processes=0), {}, ConfigError, r"processes must be a positive int, got 0"),
    (dict(processes=True), {}, TypeError, r"processes must be an int, got bool"),
    (dict(batch=4, processes=5), {}, ConfigError,
     r"^5 processes for 4 members: use at most one process per member$"),
    (dict(batch=5, processes=4), {}, ConfigError,
     r"^5 members do not split over 4 processes in chunks of 2; use a batch that is a multiple of 4$"),
    (dict(processes=2), {"WORLD_SIZE": "2"}, ConfigError, r"processes=2 under torchrun \(WORLD_SIZE=2\)"),
    (dict(processes=2, engine="reference"), {}, ConfigError, r"engine='reference' runs in one process"),
    (dict(processes=2, threads=2), {}, ConfigError, r"processes=2 runs one thread per process"),
    (dict(processes=2), {"cuda": True}, ConfigError, r"processes=2 splits a CPU rollout, not one on cuda:0")])
def test_bad_processes_are_refused_before_any_work(monkeypatch, args, env, error, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before processes was checked")

    monkeypatch.setattr(bundle_module, "load_bundle", no_work)
    for name, value in env.items():
        if name == "cuda":
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(error, match=message):
        sns_engine.rollout(**{"batch": 4, "steps": 1, "quiet": True, **args})


def test_the_command_line_passes_processes(tmp_path, capsys):
    from sns_engine.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["rollout", "--out", str(tmp_path / "e.zarr"), "--batch", "2", "--processes", "3"])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        "sns-engine rollout: error: 3 processes for 2 members: use at most one process per member\n")


def test_workers_exit_on_their_own_and_leak_nothing(tmp_path):
    """A worker that sent its share is left to exit, not terminated mid-exit (which leaked its
    semaphores: the resource tracker warned at interpreter exit)."""
    import subprocess
    import sys

    script = tmp_path / "two_workers.py"
    script.write_text("import sns_engine\n"
                      "if __name__ == '__main__':\n"
                      "    for _ in range(3):  # one call leaked at times, three each time tried\n"
                      "        sns_engine.rollout(batch=2, steps=1, path='emulator', quiet=True,\n"
                      "                           processes=2)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr, done.stderr
