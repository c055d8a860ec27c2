"""The evaluation report on stores whose content is known."""

import dataclasses

import numpy as np
import pytest

from sns_engine.data import TrajectoryStore
from sns_engine.diagnostics.evaluate import evaluate


def _every(reference, stride: int, out):
    """A store holding every `stride`-th snapshot of `reference`: an ensemble saved every
    `stride` steps that follows the solver exactly."""
    ref = TrajectoryStore(reference)
    spec = dataclasses.replace(ref.spec, snapshots=ref.spec.snapshots // stride,
                               snapshot_dt=ref.spec.snapshot_dt * stride, trajectory_batch=1)
    store = TrajectoryStore.create(out, spec)
    fields = np.asarray(ref.fields[:])[:, stride - 1::stride]
    for i in range(spec.trajectories):
        store.write(i, 0, fields[i:i + 1])
        store.root["progress"][i] = spec.snapshots
    store.finalise()
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_solver_autocorrelation_is_taken_at_the_ensembles_lag_times(tiny_kolmogorov, tmp_path,
                                                                    stride):
    ens = _every(tiny_kolmogorov, stride, tmp_path / "ens.zarr")
    lags = 40 // stride - 1
    acf = evaluate(ens, tiny_kolmogorov, windows=2, max_lag=lags)["autocorrelation"]
    dt = TrajectoryStore(ens).spec.snapshot_dt
    np.testing.assert_allclose(acf["lag_time"], dt * np.arange(lags + 1))
    # the ensemble is the solver sampled at its own interval: 1 − C(τ) agrees at every lag (a
    # reference read at its own, finer interval would decay ≈ `stride` times slower)
    np.testing.assert_allclose(1 - np.array(acf["ensemble"][1:]), 1 - np.array(acf["reference"][1:]),
                               rtol=1e-3)


def test_autocorrelation_is_left_out_when_intervals_do_not_match(tiny_kolmogorov, tmp_path):
    ens = _every(tiny_kolmogorov, 2, tmp_path / "ens.zarr")
    store = TrajectoryStore(ens, mode="r+")
    store.root.attrs["sns_engine"] = {**store.root.attrs["sns_engine"],
                                      "snapshot_dt": 1.5 * TrajectoryStore(tiny_kolmogorov).spec.snapshot_dt}
    assert "autocorrelation" not in evaluate(ens, tiny_kolmogorov, windows=2)
