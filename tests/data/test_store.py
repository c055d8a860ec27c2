"""Store, generation and datasets on a tiny deterministic stand-in solver (real solvers: tests/cli)."""

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from sns_engine.data import (
    FrameWindows,
    StoreError,
    StoreSpec,
    SystemSpec,
    TrajectoryStore,
    pairs,
    refiner_triples,
    windows,
)
from sns_engine.data.datasets import memory_budget
from sns_engine.data.store import remove_ours
from sns_engine.generation import generate


@dataclass(frozen=True)
class ToyParams:
    rate: float = 0.3


class ToySystem:
    """A chaotic-enough map x ← sin(3 x + roll(x)) on a periodic grid; state = float64 field."""

    name, preset, channels, grid = "toy", "cpu", 2, 8
    channel_names = ("a", "b")
    snapshot_dt, domain_length = 0.5, 1.0

    def __init__(self, params: ToyParams = ToyParams(), fail_after: int | None = None):
        self.params = params
        self.calls = 0
        self.fail_after = fail_after

    def metadata(self):
        return {"rate": self.params.rate}

    def initial_states(self, seeds):
        return np.stack([np.random.default_rng(s).standard_normal((2, 8, 8)) for s in seeds])

    def advance(self, state, n):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        out = []
        for _ in range(n):
            state = np.sin(3 * state + self.params.rate * np.roll(state, 1, axis=-1))
            out.append(state.astype(np.float32))
        return state, np.stack(out, axis=1)

    def state_to_arrays(self, state):
        return {"x": state}

    def state_from_arrays(self, arrays):
        return arrays["x"]


def make(tmp_path, name="s.zarr", **kw):
    args = dict(trajectories=5, snapshots=7, seed=3, trajectory_batch=2, time_chunk=3, quiet=True)
    args.update(kw)
    system = args.pop("system", ToySystem())
    return generate(system, tmp_path / name, **args)


def test_generate_writes_all_snapshots_and_normalisation(tmp_path):
    store = make(tmp_path)
    data = store.fields[:]
    assert data.shape == (5, 7, 2, 8, 8) and data.dtype == np.float32
    assert np.isfinite(data).all()
    assert store.complete
    std = np.asarray(store.normalisation["std"])
    np.testing.assert_allclose(std, data.std(axis=(0, 1, 3, 4)), rtol=1e-5)
    assert store.fields.chunks == (1, 3, 2, 8, 8)


def test_identity_attrs_keep_their_layout_and_hold_the_system_record(tmp_path):
    """attrs["sns_engine"] is flat, system fields first (stores written before the system record
    existed still open); its system part is the store's `SystemSpec`."""
    store = make(tmp_path)
    attrs = store.root.attrs["sns_engine"]
    assert list(attrs) == ["format", "version", "system", "preset", "params", "channels",
                           "channel_names", "grid", "snapshot_dt", "domain_length", "trajectories",
                           "snapshots", "seed", "trajectory_batch", "time_chunk"]
    system = store.spec.system_spec
    assert type(system) is SystemSpec
    assert system == SystemSpec("toy", "cpu", {"rate": 0.3}, 2, ("a", "b"), 8, 0.5, 1.0)
    assert StoreSpec.of(system, trajectories=5, snapshots=7, seed=3, trajectory_batch=2,
                        time_chunk=3) == store.spec


def test_same_seed_same_data_other_seed_differs(tmp_path):
    a = make(tmp_path, "a.zarr").fields[:]
    b = make(tmp_path, "b.zarr").fields[:]
    c = make(tmp_path, "c.zarr", seed=4).fields[:]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_interrupted_generation_resumes_to_identical_store(tmp_path):
    full = make(tmp_path, "full.zarr").fields[:]
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, "cut.zarr", system=ToySystem(fail_after=4))
    partial = TrajectoryStore(tmp_path / "cut.zarr")
    assert not partial.complete
    written = partial.fields[:]
    done_rows = np.isfinite(written).all(axis=(2, 3, 4))
    assert done_rows.any() and not done_rows.all()
    resumed_system = ToySystem()
    resumed = make(tmp_path, "cut.zarr", system=resumed_system)
    np.testing.assert_array_equal(resumed.fields[:], full)
    # it continued: fewer solver calls than a full run (3 blocks × 3 chunks = 9)
    assert resumed_system.calls < 9


def test_kill_while_creating_leaves_no_half_made_store(tmp_path, monkeypatch):
    def killed(self):
        raise KeyboardInterrupt("simulated kill after the arrays, before the attributes")

    with monkeypatch.context() as patch:
        patch.setattr(StoreSpec, "to_attrs", killed)
        with pytest.raises(KeyboardInterrupt):
            make(tmp_path)
    assert not (tmp_path / "s.zarr").exists()  # the arrays went to the scratch folder only
    assert (tmp_path / "s.zarr.creating").exists()
    rerun = make(tmp_path)  # no --overwrite needed, and the stale scratch folder is gone
    np.testing.assert_array_equal(rerun.fields[:], make(tmp_path, "full.zarr").fields[:])
    assert not (tmp_path / "s.zarr.creating").exists()


def test_mismatched_existing_store_is_refused_and_kept(tmp_path):
    make(tmp_path)
    before = TrajectoryStore(tmp_path / "s.zarr").fields[:]
    with pytest.raises(StoreError, match="was made with snapshots="):
        make(tmp_path, snapshots=9)
    with pytest.raises(StoreError, match="was made with params="):
        make(tmp_path, system=ToySystem(ToyParams(rate=0.5)))
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "s.zarr").fields[:], before)
    replaced = make(tmp_path, snapshots=9, overwrite=True)
    assert replaced.fields.shape[1] == 9


def test_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a sns_engine store"):
        TrajectoryStore(tmp_path / "plain")
    with pytest.raises(StoreError, match="trajectories must be a positive"):
        make(tmp_path, trajectories=0)


def test_solver_store_opens_in_xarray_as_cf_data(tmp_path):
    store = make(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing xarray or zarr warns about
        ds = xr.open_zarr(store.path)
    assert ds["fields"].dims == ("trajectory", "time", "channel", "y", "x")
    np.testing.assert_array_equal(ds["fields"].values, store.fields[:])
    np.testing.assert_allclose(ds["time"].values, 0.5 * np.arange(1, 8))  # after spin-up
    np.testing.assert_array_equal(ds["trajectory"], np.arange(5))
    assert list(ds["channel"].values) == ["a", "b"] and ds["x"].size == 8
    assert ds.attrs["source"].startswith("sns_engine ") and ds.attrs["normalisation"]
    assert all(var.attrs.get("long_name") for var in ds.variables.values())


def test_qg_store_names_its_fields_and_si_units(tmp_path):
    """The units table of the figures, written as CF attributes: seconds, metres, pyqg's cell
    centres, the PV channels."""
    system = SystemSpec("qg", "cpu", {}, 2, ("q_upper", "q_lower"), 4, 3600.0, 1e6)
    spec = StoreSpec.of(system, trajectories=1, snapshots=3, seed=0, trajectory_batch=1,
                        time_chunk=3)
    ds = xr.open_zarr(TrajectoryStore.create(tmp_path / "qg.zarr", spec).path)
    assert list(ds["channel"].values) == ["q_upper", "q_lower"]
    assert ds["fields"].attrs == {"long_name": "upper-layer PV anomaly, lower-layer PV anomaly",
                                  "units": "1/s"}
    assert ds["time"].attrs["units"] == "s" and ds["x"].attrs["units"] == "m"
    np.testing.assert_allclose(ds["x"], [125e3, 375e3, 625e3, 875e3])
    np.testing.assert_allclose(ds["time"], [3600.0, 7200.0, 10800.0])


def test_datasets_offsets_and_normalisation(tmp_path):
    store = make(tmp_path)
    raw = store.fields[:]
    std = np.asarray(store.normalisation["std"], dtype=np.float32)[:, None, None]
    p = pairs(store)
    assert len(p) == 5 * 6
    item = p[6 + 2]  # trajectory 1, t = 2
    torch.testing.assert_close(item, torch.from_numpy(raw[1, 2:4] / std))
    w = windows(store, 4, trajectories=[4])
    assert len(w) == 3 and w[2].shape == (5, 2, 8, 8)
    torch.testing.assert_close(w[2], torch.from_numpy(raw[4, 2:7] / std))
    r = refiner_triples(store, lag=3, normalise=False)
    assert len(r) == 5 * 3
    torch.testing.assert_close(r[0], torch.from_numpy(raw[0, [0, 3, 4]]))
    with pytest.raises(StoreError, match="fewer than"):
        refiner_triples(store, lag=7)


def test_frames_in_another_scale_than_the_stores(tmp_path):
    """A bundle trained on other data has its own std: frames fed to its models are divided by
    that one, per channel, and a std that cannot scale them is refused before any loading."""
    store = make(tmp_path)
    raw = store.fields[:]
    given = [0.7, 3.1]
    r = refiner_triples(store, lag=3, normalise=given)
    assert r.std == pytest.approx(given)
    torch.testing.assert_close(r[4], torch.from_numpy(raw[1, [1, 4, 5]] / np.float32(given)[:, None, None]))
    assert pairs(store).std == pytest.approx(store.normalisation["std"])
    assert refiner_triples(store, lag=3, normalise=False).std is None
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="normalise needs 2 finite positive stds"):
            pairs(store, normalise=bad)


def test_in_memory_budget_is_checked_before_loading(tmp_path):
    store = make(tmp_path)  # 5 × 7 × 2 × 8 × 8 float32 = 17 920 bytes
    assert FrameWindows(store, (0, 1), max_bytes=17_920).data.nbytes == 17_920
    with pytest.raises(MemoryError, match="0.0 GiB of frames exceed the 0.0 GiB in-memory budget"):
        FrameWindows(store, (0, 1), max_bytes=17_919)
    assert memory_budget() > 1 << 30  # half of physical memory, on any machine that runs this


class DivergingSystem(ToySystem):
    """The toy solver whose snapshots turn NaN from its `nan_at`-th advance on (a blow-up)."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.nan_at = nan_at

    def advance(self, state, n):
        state, snaps = super().advance(state, n)
        if self.calls >= self.nan_at:
            snaps[:, -1] = np.nan
        return state, snaps


def test_overwrite_refuses_what_sns_engine_did_not_make(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "thesis.tex").write_text("years of work")
    foreign_group = tmp_path / "theirs.zarr"
    zarr.open_group(str(foreign_group), mode="w").attrs["owner"] = "someone else"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    for path in (plain, foreign_group, a_file):
        for overwrite in (True, False):
            with pytest.raises(StoreError) as err:
                make(tmp_path, name=path.name, overwrite=overwrite)
            message = str(err.value)
            assert str(path) in message and "not a sns_engine store" in message
            assert "overwrite=True" not in message and "another out=" in message
    assert (plain / "thesis.tex").read_text() == "years of work" and a_file.read_text() == "keep"
    assert zarr.open_group(str(foreign_group)).attrs["owner"] == "someone else"
    assert not list(tmp_path.glob("*.creating"))  # refused before anything was built


def test_overwrite_refuses_the_working_directory_and_its_parents(tmp_path, monkeypatch):
    inside = tmp_path / "project" / "work"
    inside.mkdir(parents=True)
    (tmp_path / "project" / "data.csv").write_text("1,2")
    monkeypatch.chdir(inside)
    for out in ("..", ".", "../..", str(inside)):
        with pytest.raises(StoreError, match="working directory or one above it.*will not be deleted"):
            generate(ToySystem(), out, trajectories=2, snapshots=3, overwrite=True, quiet=True)
    assert (tmp_path / "project" / "data.csv").read_text() == "1,2" and inside.is_dir()


def test_remove_ours_checks_every_path_before_deleting_any(tmp_path):
    store = make(tmp_path).path
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(StoreError, match="plain is a plain directory, not a sns_engine store"):
        remove_ours(store, plain)
    assert TrajectoryStore(store).complete  # the store, checked first, is still there
    scratch = tmp_path / "x.zarr.creating"
    zarr.open_group(str(scratch), mode="w")  # a store being built: no attributes yet
    remove_ours(store, scratch, tmp_path / "absent")
    assert not store.exists() and not scratch.exists()


def test_overwrite_replaces_a_sns_engine_store(tmp_path):
    make(tmp_path, snapshots=5)
    replaced = make(tmp_path, snapshots=9, overwrite=True)
    assert replaced.fields.shape[1] == 9 and replaced.complete


def test_diverged_generation_is_marked_failed_and_refused_by_readers(tmp_path):
    with pytest.raises(StoreError, match=r"diverged.*s\.zarr is left incomplete.*--overwrite.*delete"):
        make(tmp_path, system=DivergingSystem(nan_at=3))
    store = TrajectoryStore(tmp_path / "s.zarr")
    assert not store.complete and "normalisation" not in store.root.attrs
    assert "diverged" in xr.open_zarr(store.path).attrs["failed"]  # in the consolidated metadata
    assert store.progress(0) == 6 and store.progress(1) == -1  # block 0's third chunk blew up
    full = make(tmp_path, "full.zarr").fields[:]
    np.testing.assert_array_equal(store.fields[:2, :6], full[:2, :6])  # what came before is kept
    for read in (lambda: store.normalisation, lambda: pairs(store), lambda: store.check_complete()):
        with pytest.raises(StoreError, match=r"is incomplete \(\d+ of 35 snapshots\): its generation "
                                             "failed .*diverged"):
            read()
    # the same settings resume it (here the solver no longer blows up) and clear the mark
    resumed = make(tmp_path)
    assert resumed.complete and "failed" not in resumed.root.attrs
    assert "failed" not in xr.open_zarr(resumed.path).attrs
    np.testing.assert_array_equal(resumed.fields[:], full)


def test_killed_generation_is_refused_by_readers_until_finished(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, system=ToySystem(fail_after=4))
    with pytest.raises(StoreError, match=r"incomplete \(\d+ of 35 snapshots\); rerun the same"):
        windows(TrajectoryStore(tmp_path / "s.zarr"), 2)
