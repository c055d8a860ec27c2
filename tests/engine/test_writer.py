"""An ensemble store as a scientist reads it: `xarray.open_zarr` without a warning, CF dimensions,
coordinates, units and attributes, and the states, levels and moves the API returns."""

import datetime
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import sns_engine
from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.data import TrajectoryStore
from sns_engine.engine.initial import initial_conditions

ROLLOUT = dict(batch=4, steps=8, save_every=2, seed=5, quiet=True)


@pytest.fixture(scope="module")
def quarter_bundle(tmp_path_factory):
    """The embedded default bundle, its system said to store a state every 0.25 time units, so a
    short rollout reaches t = 1.5 (the networks are the same)."""
    out = tmp_path_factory.mktemp("bundle") / "quarter"
    shutil.copytree(DEFAULT_BUNDLE, out)
    config = json.loads((out / "config.json").read_text())
    config["system"]["snapshot_dt"] = 0.25
    (out / "config.json").write_text(json.dumps(config))
    return out


def open_quietly(path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing xarray or zarr warns about
        return xr.open_zarr(path)


def test_rollout_store_reads_like_the_fields_data(quarter_bundle, tmp_path):
    memory = sns_engine.rollout(quarter_bundle, **ROLLOUT)
    out = tmp_path / "ens.zarr"
    streamed = sns_engine.rollout(quarter_bundle, out=out, **ROLLOUT)
    ds = open_quietly(out)
    assert "consolidated_metadata" in json.loads((out / "zarr.json").read_text())

    assert ds.fields.dims == ("member", "time", "channel", "y", "x")
    assert ds.levels.dims == ("member", "time", "substep", "estimate")
    assert ds.moves.dims == ("member", "time", "substep") and ds.flags.dims == ("member", "time")
    np.testing.assert_array_equal(ds.member, np.arange(4))
    np.testing.assert_allclose(ds.time, 0.5 * np.arange(5))  # t = 0, then every save_every steps
    assert list(ds.channel.values) == ["vorticity"] and list(ds.estimate.values) == ["n_x", "n_y"]
    np.testing.assert_allclose(ds.x, np.arange(64) * 2 * np.pi / 64)
    np.testing.assert_array_equal(ds.y, ds.x)
    for name, var in ds.variables.items():
        assert var.attrs.get("long_name"), name
        assert "units" in var.attrs or var.dtype == object, name
    assert ds.fields.units == ds.time.units == ds.x.units == "1"  # nondimensional Kolmogorov

    # the state the API returned, and the initial state at t = 0
    np.testing.assert_array_equal(ds.fields.sel(member=3, time=1.5, method="nearest"),
                                  memory.states[3, 2])
    bundle = sns_engine.load_bundle(quarter_bundle)
    initial = initial_conditions(bundle, 4, None, torch.arange(4), seed=5) * bundle.scale
    np.testing.assert_allclose(ds.fields.sel(time=0), initial, rtol=1e-6)

    # levels and moves: the API's, the save_every steps that led to each state; none before t = 0
    assert streamed.levels.equal(memory.levels) and streamed.moves.equal(memory.moves)
    assert ds.levels.isel(time=0).isnull().all() and ds.moves.isel(time=0).isnull().all()
    np.testing.assert_array_equal(ds.levels.isel(time=slice(1, None)).values.reshape(4, 8, 2),
                                  memory.levels)
    np.testing.assert_array_equal(ds.moves.isel(time=slice(1, None)).values.reshape(4, 8),
                                  memory.moves)
    assert (ds.flags == 0).all() and ds.flagged_at.isnull().all()

    # who made it, when, from what, with which settings
    assert ds.attrs["Conventions"].startswith("CF-")
    assert ds.attrs["source"] == f"sns_engine {sns_engine.__version__}"
    made = datetime.datetime.strptime(ds.attrs["date_created"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs(now - made) < datetime.timedelta(minutes=10)
    assert ds.attrs["bundle"] == {"name": "quarter", "files": bundle.checksums(
        ["emulator", "refiner"])}
    assert ds.attrs["rollout"]["save_every"] == 2 and ds.attrs["rollout"]["seed"] == 5


def test_flags_mark_the_frozen_states_and_flagged_at_is_a_time(quarter_bundle, tmp_path):
    out = tmp_path / "ens.zarr"
    # member 2's largest |value| grows past 4.6555 std at step 4 (0-based); the others stay below
    result = sns_engine.rollout(quarter_bundle, out=out, bound=4.6555, path="emulator", **ROLLOUT)
    step = result.flagged_at.numpy()
    np.testing.assert_array_equal(step, [-1, -1, 4, -1])
    ds = open_quietly(out)
    expected = np.where(step >= 0, (step + 1) * 0.25, np.nan)  # a step is 0.25 time units
    np.testing.assert_allclose(ds.flagged_at, expected)
    frozen = (step[:, None] >= 0) & (ds.time.values[None] >= expected[:, None] - 1e-12)
    np.testing.assert_array_equal(ds.flags != 0, frozen)
    np.testing.assert_array_equal(TrajectoryStore(out).flagged_steps(), step)
