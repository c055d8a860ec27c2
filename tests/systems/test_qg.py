"""QG jet solver: real pyqg runs at 64² for a few hundred steps."""

import json
import warnings

import numpy as np
import pytest

from sns_engine.systems import SolverDivergedError, get_system
from sns_engine.systems.qg import PRESETS as QG_PRESETS
from sns_engine.systems.qg import QGParams, qg_layer_parameters

TINY = {"spinup_steps": 200}


@pytest.fixture(scope="module")
def system():
    return get_system("qg", "cpu", **TINY)


@pytest.fixture(scope="module")
def start(system):
    return system.initial_states([21, 22])


def _pyqg_model(system, seed):
    """pyqg's own QGModel with the system's parameters, seeded as pyqg users do."""
    import pyqg

    p = system.params
    np.random.seed(seed)  # noqa: NPY002 (pyqg reads the legacy global RNG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pyqg.QGModel(nx=p.nx, L=p.L, dt=p.dt, rek=p.rek, beta=p.beta, delta=p.delta,
                            rd=p.rd, H1=p.H1, U1=p.U1, U2=p.U2, filterfac=p.filterfac, log_level=0)


@pytest.mark.slow
def test_snapshots_shape_dtype_and_finite(system, start):
    state, snaps = system.advance(start, 3)
    assert snaps.shape == (2, 3, 2, 64, 64) and snaps.dtype == np.float32
    assert np.isfinite(snaps).all()
    assert (snaps.std(axis=(0, 1, 3, 4)) > 0).all()
    assert list(state["steps"]) == [230, 230]


@pytest.mark.slow
def test_matches_an_uninterrupted_pyqg_run(system, start):
    # Spin-up, then two advances (each rebuilding its models from the state) == pyqg run straight.
    state, first = system.advance(start, 2)
    _, second = system.advance(state, 1)
    model = _pyqg_model(system, 22)
    frames = []
    for step in range(1, 230 + 1):
        model._step_forward()
        if step > 200 and step % 10 == 0:
            frames.append(np.array(model.q, dtype=np.float32))
    assert np.array_equal(np.concatenate([first[1], second[1]]), np.stack(frames))


@pytest.mark.slow
def test_same_seed_is_identical_and_seeds_differ(system, start):
    again = system.initial_states([21, 23])
    assert all(np.array_equal(again[k][0], start[k][0]) for k in start)
    assert not np.allclose(again["q"][1], start["q"][1])
    assert not np.allclose(start["q"][0], start["q"][1])


@pytest.mark.slow
def test_global_numpy_rng_is_left_alone(system):
    np.random.seed(5)  # noqa: NPY002
    expected = np.random.rand(3)  # noqa: NPY002
    np.random.seed(5)  # noqa: NPY002
    system.initial_states([1])
    assert np.array_equal(np.random.rand(3), expected)  # noqa: NPY002


@pytest.mark.slow
def test_state_round_trip_advances_bit_identically(system, start):
    arrays = {k: v.copy() for k, v in system.state_to_arrays(start).items()}
    assert not any(np.iscomplexobj(v) for v in arrays.values())
    restored = system.state_from_arrays(arrays)
    state_a, snaps_a = system.advance(start, 2)
    state_b, snaps_b = system.advance(restored, 2)
    assert np.array_equal(snaps_a, snaps_b)
    assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)


def test_state_from_arrays_checks_keys_and_shapes(system):
    n = 64
    arrays = {"q": np.zeros((1, 2, n, n)), "ablevel": np.array([2]), "steps": np.array([0])}
    with pytest.raises(ValueError, match="lack.*dqhdt_imag"):
        system.state_from_arrays(arrays)
    for key in ("qh", "dqhdt", "dqhdt_p", "dqhdt_pp"):
        for part in ("real", "imag"):
            arrays[f"{key}_{part}"] = np.zeros((1, 2, n, n // 2 + 1))
    arrays["q"] = np.zeros((1, 2, 32, 32))
    with pytest.raises(ValueError, match="'q' has shape.*another nx"):
        system.state_from_arrays(arrays)


@pytest.mark.slow
def test_divergence_names_the_trajectory(system, start):
    arrays = system.state_to_arrays(start)
    arrays["q"][1, 0, 5, 5] = np.nan
    with pytest.raises(SolverDivergedError, match=r"qg: trajectory 1 diverged.*lower dt"):
        system.advance(system.state_from_arrays(arrays), 1)
    huge = get_system("qg", "cpu", spinup_steps=0, dt=100 * 3600.0)
    with pytest.raises(SolverDivergedError, match=r"qg: trajectory 0 diverged \(NaN/Inf\) with "
                       r"dt=360000.0 \(changed from the cpu preset: dt was 3600.0\); lower dt$"):
        huge.advance(huge.initial_states([0]), 10)


@pytest.mark.slow
def test_two_workers_equal_one(start):
    parallel = get_system("qg", "cpu", workers=2, **TINY)
    try:
        state_p = parallel.initial_states([21, 22])
        assert all(np.array_equal(state_p[k], start[k]) for k in start)
        state_p, snaps_p = parallel.advance(state_p, 2)
    finally:
        parallel.close()
    serial = get_system("qg", "cpu", **TINY)
    state_s, snaps_s = serial.advance(start, 2)
    assert np.array_equal(snaps_p, snaps_s)
    assert all(np.array_equal(state_p[k], state_s[k]) for k in state_s)
    assert parallel.metadata() == serial.metadata()  # so a generation resumes with any count
    assert "workers" not in serial.metadata()


def test_metadata_holds_parameters_and_inversion_constants(system):
    meta = system.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["system"] == "qg" and meta["spinup_steps"] == 200 and meta["dt"] == 3600.0
    model = _pyqg_model(system, 0)
    inv = meta["inversion"]
    assert inv == qg_layer_parameters(system.params)
    assert (inv["f1"], inv["f2"], inv["length"], inv["width"]) == pytest.approx(
        (model.F1, model.F2, model.L, model.W), rel=1e-14)
    assert (inv["h1"], inv["h2"]) == pytest.approx(tuple(model.Hi), rel=1e-14)
    assert (system.channels, system.grid, system.channel_names) == (2, 64, ("q_upper", "q_lower"))
    assert system.snapshot_dt == 36_000.0 and system.domain_length == 1e6


def test_presets():
    paper, cpu = QG_PRESETS["paper"], QG_PRESETS["cpu"]
    assert (paper.nx, paper.dt, paper.rek, paper.delta, paper.beta, paper.spinup_steps,
            paper.steps_per_snapshot) == (64, 3600.0, 7e-8, 0.1, 1e-11, 56_000, 10)
    assert paper.L == 1e6 and paper.H1 == 500.0 and paper.rd == 15_000.0 and paper.U1 == 0.025
    assert cpu.spinup_steps < paper.spinup_steps and cpu.workers == 1


@pytest.mark.parametrize("override", [{"nx": 0}, {"workers": 0}, {"dt": -3600.0},
                                      {"spinup_steps": -1}, {"steps_per_snapshot": 0}])
def test_non_positive_sizes_are_refused(override):
    (name, value), = override.items()
    with pytest.raises(ValueError, match=f"QGParams.{name} must be .*{value}"):
        get_system("qg", **override)


def test_unknown_override_lists_the_parameters():
    with pytest.raises(ValueError, match="'nz'.*nx, L, dt"):
        get_system("qg", nz=3)
    assert QGParams().nx == 64
