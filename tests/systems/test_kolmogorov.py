"""Kolmogorov flow solver (real jax-cfd runs on tiny grids) and the system registry."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_cfd.spectral import equations

from sns_engine.systems import PRESETS, SYSTEMS, SolverDivergedError, check_finite, get_system
from sns_engine.systems.kolmogorov import PRESETS as KOLMOGOROV_PRESETS
from sns_engine.systems.kolmogorov import (
    KolmogorovParams,
    equation,
    solver_grid,
    spectral_downsample,
)

TINY = {"solver_grid": 64, "output_grid": 32, "spinup_steps": 30}


@pytest.fixture(scope="module")
def system():
    return get_system("kolmogorov", "cpu", **TINY)


@pytest.fixture(scope="module")
def start(system):
    return system.initial_states([11, 12])


@pytest.mark.slow
def test_snapshots_shape_dtype_and_finite(system, start):
    state, snaps = system.advance(start, 3)
    assert snaps.shape == (2, 3, 1, 32, 32) and snaps.dtype == np.float32
    assert np.isfinite(snaps).all()
    assert state.shape == (2, 64, 33) and state.dtype == jnp.complex64
    assert 1.0 < snaps.std() < 20.0  # a turbulent vorticity field of O(initial_rms)
    assert not np.array_equal(snaps[:, 0], snaps[:, 1])  # it evolves


@pytest.mark.slow
def test_same_seed_is_identical_and_seeds_differ(system, start):
    again = system.initial_states([11, 13])
    assert np.array_equal(np.asarray(again[0]), np.asarray(start[0]))
    assert not np.allclose(np.asarray(again[1]), np.asarray(start[1]))
    assert not np.allclose(np.asarray(start[0]), np.asarray(start[1]))


@pytest.mark.slow
def test_state_round_trip_advances_bit_identically(system, start):
    arrays = {k: v.copy() for k, v in system.state_to_arrays(start).items()}
    assert all(v.dtype == np.float32 for v in arrays.values())
    restored = system.state_from_arrays(arrays)
    state_a, snaps_a = system.advance(start, 2)
    state_b, snaps_b = system.advance(restored, 2)
    assert np.array_equal(snaps_a, snaps_b)
    assert np.array_equal(np.asarray(state_a), np.asarray(state_b))


@pytest.mark.slow
def test_state_from_arrays_rejects_another_grid(system, start):
    arrays = system.state_to_arrays(start)
    with pytest.raises(ValueError, match="solver_grid"):
        system.state_from_arrays({k: v[:, :32] for k, v in arrays.items()})


@pytest.mark.slow
def test_snapshot_keeps_the_solver_low_modes(system, start):
    state, snaps = system.advance(start, 1)
    n, m = 64, 32
    fine = np.fft.fft2(np.fft.irfft2(np.asarray(state, dtype=np.complex128), s=(n, n)))  # [kx, ky]
    coarse = np.fft.fft2(snaps[:, 0, 0].astype(np.float64).transpose(0, 2, 1)) * (n / m) ** 2
    k = np.r_[0:m // 2, n - m // 2 + 1:n]  # fine indices of |k| < m/2
    kc = np.r_[0:m // 2, m // 2 + 1:m]     # the same modes on the coarse grid
    expected = fine[:, k][:, :, k]
    np.testing.assert_allclose(coarse[:, kc][:, :, kc], expected,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(coarse[:, m // 2], 0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(coarse[:, :, m // 2], 0, atol=1e-5 * np.abs(expected).max())


def test_spectral_downsample_samples_a_band_limited_field():
    rng = np.random.default_rng(3)
    n, m = 48, 16
    k = np.fft.fftfreq(n, 1 / n)
    coeffs = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    coeffs[(np.abs(k)[:, None] >= m // 2) | (np.abs(k)[None, :] >= m // 2)] = 0
    field = np.fft.ifft2(coeffs).real * n  # real, modes |kx|, |ky| < m/2 only
    out = np.asarray(spectral_downsample(jnp.fft.rfft2(jnp.asarray(field, jnp.float32)), m))
    np.testing.assert_allclose(out, field[::n // m, ::n // m], atol=2e-5 * np.abs(field).max())


def test_equation_is_jax_cfd_forced_navier_stokes():
    params = KolmogorovParams(reynolds=500.0, solver_grid=32, output_grid=32)
    ours = equation(params)
    ref = equations.ForcedNavierStokes2D(1 / 500.0, solver_grid(params), smooth=True)
    w_hat = jnp.fft.rfft2(jax.random.normal(jax.random.PRNGKey(4), (32, 32)))
    assert np.array_equal(np.asarray(ours.explicit_terms(w_hat)),
                          np.asarray(ref.explicit_terms(w_hat)))
    assert np.array_equal(np.asarray(ours.implicit_terms(w_hat)),
                          np.asarray(ref.implicit_terms(w_hat)))


@pytest.mark.slow
def test_snapshots_are_laid_out_y_then_x():
    # From rest the forcing alone acts: ω ≈ −t·k_f·cos(k_f y), varying along axis −2 only.
    system = get_system("kolmogorov", "cpu", solver_grid=32, output_grid=32, spinup_steps=0,
                        initial_rms=0.0)
    _, snaps = system.advance(system.initial_states([1]), 2)
    frame = snaps[0, -1, 0]
    y = np.arange(32) * 2 * np.pi / 32
    assert np.abs(frame - frame.mean(axis=1, keepdims=True)).max() < 1e-6 * np.abs(frame).max()
    profile = frame[:, 0]
    assert np.corrcoef(profile, -np.cos(4 * y))[0, 1] > 0.9999
    np.testing.assert_allclose(np.abs(profile).max(), 4 * system.snapshot_dt * 2, rtol=0.02)


@pytest.mark.slow
def test_huge_dt_raises_solver_diverged():
    system = get_system("kolmogorov", "cpu", solver_grid=32, output_grid=32, spinup_steps=0,
                        dt=10.0)
    with pytest.raises(SolverDivergedError, match=r"kolmogorov: trajectory \d+ .*lower dt"):
        system.advance(system.initial_states([0, 1]), 3)


def test_check_finite_names_the_trajectory():
    snaps = np.random.default_rng(0).normal(size=(3, 2, 1, 4, 4)).astype(np.float32)
    check_finite("kolmogorov", snaps, "fix it")
    snaps[2, 1, 0, 3, 3] = np.inf
    with pytest.raises(SolverDivergedError, match="trajectory 2 diverged.*fix it"):
        check_finite("kolmogorov", snaps, "fix it")
    with pytest.raises(ValueError, match="trajectory 5"):
        check_finite("kolmogorov", snaps[2:], "fix it", first=5)


def test_metadata_and_attributes(system):
    meta = system.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["system"] == "kolmogorov" and meta["preset"] == "cpu"
    assert {f: meta[f] for f in KolmogorovParams.__dataclass_fields__} == \
        {f: getattr(system.params, f) for f in KolmogorovParams.__dataclass_fields__}
    assert (system.channels, system.grid, system.channel_names) == (1, 32, ("vorticity",))
    assert system.snapshot_dt == pytest.approx(5e-3)
    assert system.domain_length == pytest.approx(2 * math.pi)


def test_presets():
    paper, cpu = KOLMOGOROV_PRESETS["paper"], KOLMOGOROV_PRESETS["cpu"]
    assert (paper.reynolds, paper.solver_grid, paper.output_grid, paper.dt, paper.spinup_steps,
            paper.steps_per_snapshot, paper.drag) == (1e4, 512, 64, 1e-3, 10_000, 5, 0.1)
    assert (cpu.reynolds, cpu.solver_grid, cpu.output_grid, cpu.steps_per_snapshot) == \
        (1e3, 128, 64, 5)


def test_registry_lists_and_errors():
    assert SYSTEMS == ("kolmogorov", "qg") and PRESETS == ("paper", "cpu")
    with pytest.raises(ValueError, match="'burgers'.*kolmogorov, qg"):
        get_system("burgers")
    with pytest.raises(ValueError, match="'gpu'.*paper, cpu"):
        get_system("kolmogorov", "gpu")
    with pytest.raises(ValueError, match="'viscosity'.*reynolds"):
        get_system("kolmogorov", viscosity=1e-3)


@pytest.mark.parametrize("override", [{"solver_grid": 0}, {"output_grid": -2}, {"dt": 0.0},
                                      {"steps_per_snapshot": 0}, {"spinup_steps": -1},
                                      {"reynolds": -5.0}])
def test_non_positive_sizes_are_refused(override):
    (name, value), = override.items()
    with pytest.raises(ValueError, match=f"{name} must be .*{value}"):
        get_system("kolmogorov", **override)


def test_grid_constraints_and_int_overrides():
    with pytest.raises(ValueError, match="output_grid=128 exceeds solver_grid=64"):
        get_system("kolmogorov", solver_grid=64, output_grid=128)
    with pytest.raises(ValueError, match="solver_grid must be even"):
        get_system("kolmogorov", solver_grid=63, output_grid=32)
    params = get_system("kolmogorov", reynolds=100).params
    assert isinstance(params.reynolds, float) and params.reynolds == 100.0
    system = get_system("kolmogorov", solver_grid=32, output_grid=32)
    with pytest.raises(ValueError, match="n_snapshots must be positive"):
        system.advance(None, 0)
    with pytest.raises(ValueError, match=r"seeds must lie in \[0, 2\*\*32\)"):
        system.initial_states([-1])


def test_jax_shares_the_gpu_with_torch():
    """jax would otherwise grab 75 % of GPU memory when it first runs the solver on a GPU."""
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") not in (None, "false"):
        pytest.skip("the user set XLA_PYTHON_CLIENT_PREALLOCATE")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
