"""The evaluation report on stores whose content is known: a solver's own data, synthetic random
fields with a prescribed spectrum and time correlation, and the solvers' filters."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from sns_engine.data import TrajectoryStore
from sns_engine.data.store import StoreSpec
from sns_engine.diagnostics.evaluate import evaluate, resolved_wavenumber
from sns_engine.diagnostics.statistics import sign_test, stationarity


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


# ------------------------------------------------------------------ resolved shells of the solvers
def _spec(system, members=1, snapshots=1, grid=32, solver_grid=32, length=None):
    if system == "kolmogorov":
        params, names = {"solver_grid": solver_grid}, ("vorticity",)
        length = 2 * math.pi if length is None else length
    else:
        f1 = 15_000.0 ** -2 / 1.1  # rd = 15 km, δ = 0.1
        length = 1e6 if length is None else length
        params = {"inversion": {"length": length, "f1": f1, "f2": 0.1 * f1}}
        names = ("q_upper", "q_lower")
    return StoreSpec(system=system, preset="synthetic", params=params, channels=len(names),
                     channel_names=names, grid=grid, snapshot_dt=0.1, domain_length=length,
                     trajectories=members, snapshots=snapshots, seed=0, trajectory_batch=members,
                     time_chunk=snapshots)


@pytest.mark.parametrize(("solver_grid", "grid", "k_max"), [
    (32, 32, 9), (96, 96, 31), (128, 96, 41), (128, 128, 41), (512, 64, 31)])
def test_resolved_wavenumber_kolmogorov_is_the_last_whole_shell_of_jax_cfds_filter(
        solver_grid, grid, k_max):
    """Every mode of the shells ≤ k_max passes jax-cfd's 2/3-rule filter (`brick_wall_filter_2d`
    on the rfft half plane, whose modes stand for their conjugates too); shell k_max + 1 already
    lost one, unless the output truncation (|k_x|, |k_y| < grid/2) came first."""
    from jax_cfd.base import grids
    from jax_cfd.spectral.utils import brick_wall_filter_2d

    assert resolved_wavenumber(_spec("kolmogorov", grid=grid, solver_grid=solver_grid)) == k_max
    domain = ((0, 2 * math.pi), (0, 2 * math.pi))
    kept = np.asarray(brick_wall_filter_2d(grids.Grid((solver_grid, solver_grid), domain=domain)))
    kx = np.fft.fftfreq(solver_grid, 1 / solver_grid)[:, None]
    ky = np.fft.rfftfreq(solver_grid, 1 / solver_grid)[None, :]
    shell = np.broadcast_to(np.round(np.hypot(kx, ky)), kept.shape)
    assert (kept[shell <= k_max] == 1).all()
    if k_max < grid // 2 - 1:
        assert (kept[shell == k_max + 1] == 0).any()
    else:
        assert k_max == grid // 2 - 1 and (kept[shell == k_max + 1] == 1).all()


@pytest.mark.parametrize("nx", [32, 64])
def test_resolved_wavenumber_qg_is_where_pyqgs_filter_starts(nx):
    """pyqg multiplies the modes with |k|·dx > 0.65π by its filter each step: the shells up to
    0.65·(nx/2)·dk keep their modes (filter 1 up to the cutoff), the next loses some."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No pyfftw detected"
        import pyqg

        model = pyqg.QGModel(nx=nx, L=1e6, log_level=0)
    dk = 2 * math.pi / 1e6
    k_max = resolved_wavenumber(_spec("qg", grid=nx))
    assert k_max == pytest.approx(0.65 * nx / 2 * dk, rel=1e-14)
    wavenumber, kept = np.asarray(model.wv), np.asarray(model.filtr)
    shell, last = np.round(wavenumber / dk), math.floor(k_max / dk)
    assert (kept[wavenumber <= k_max] == 1).all()
    # the outer modes of shell `last` may pass the cutoff by < dk/2 (nx = 32: |k| = 10.44 dk)
    assert (kept[shell <= last] > 1 - 1e-5).all()
    assert (kept[shell == last + 1] < 1).any()


# ------------------------------------------------------------------ evaluation of synthetic stores
def _fields(system, members, snapshots, seed, rho=0.8, damping=math.inf):
    """Gaussian random fields that are AR(1) in time (lag-1 correlation `rho` per mode), float32
    (B, T, C, 32, 32). Kolmogorov: white vorticity on the modes |k_x|, |k_y| ≤ 9, the square a
    2/3-rule filter keeps at solver grid 32 (so the shells 10 … 12 are partial, as a solver's);
    QG: PV ∝ 1/|k| up to shell 14, past pyqg's cutoff 10.4. `damping` multiplies each mode by
    exp(−(|k|/damping)²), as an over-damping emulator would."""
    gen = np.random.default_rng(seed)
    channels = 1 if system == "kolmogorov" else 2
    shape = (members, channels, 32, 32)
    x = gen.standard_normal(shape)
    noise = [x]
    for _ in range(snapshots - 1):
        x = rho * x + math.sqrt(1 - rho**2) * gen.standard_normal(shape)
        noise.append(x)
    m = np.fft.fftfreq(32, 1 / 32)[:, None]
    n = np.fft.rfftfreq(32, 1 / 32)[None, :]
    k = np.hypot(m, n)
    if system == "kolmogorov":
        amplitude = ((np.maximum(abs(m), n) <= 9) & (k > 0)).astype(float)
    else:
        amplitude = np.where((k > 0) & (np.round(k) <= 14), 1 / np.maximum(k, 1), 0.0)
    amplitude = amplitude * np.exp(-(k / damping) ** 2)
    out = np.fft.irfft2(np.fft.rfft2(np.stack(noise, axis=1)) * amplitude, s=(32, 32))
    if system == "qg":
        out *= 1e-6 * np.array([1.0, 0.3]).reshape(1, 1, 2, 1, 1)
    return out.astype(np.float32)


def _store(path, system, fields):
    store = TrajectoryStore.create(path, _spec(system, *fields.shape[:2]))
    store.fields[:] = fields
    return path


@pytest.fixture(scope="module", params=["kolmogorov", "qg"])
def synthetic(request, tmp_path_factory):
    """A reference (4 trajectories × 40 snapshots), a second solver run (8 × 20: the floor), an
    over-damped and a too slowly decorrelating ensemble, each evaluated against the reference."""
    system, out = request.param, tmp_path_factory.mktemp(request.param)
    ref = _store(out / "ref.zarr", system, _fields(system, 4, 40, seed=0))
    stores = {"ref": ref, "system": system}
    for name, kwargs in (("floor", {}), ("damped", {"damping": 8.0}), ("slow", {"rho": 0.95})):
        path = _store(out / f"{name}.zarr", system, _fields(system, 8, 20, seed=1, **kwargs))
        stores[name] = path
        stores[f"{name}_report"] = evaluate(path, ref, windows=2)
    return stores


def test_solver_floor_is_small_and_a_damped_ensemble_is_clearly_worse(synthetic):
    floor, damped = synthetic["floor_report"], synthetic["damped_report"]
    for f, d in zip(floor["windows"], damped["windows"], strict=True):
        for curve, error in f["spectrum_error"].items():
            assert error < 0.15 and d["spectrum_error"][curve] > 5 * error
            # damping shows at small scales: the high band most, the low band least
            bands = d["band_error"][curve]
            assert bands["low"] < bands["mid"] < bands["high"] and bands["high"] > 1.5
            assert f["band_error"][curve]["high"] < 0.15
            assert 0.75 < f["energy_ratio"][curve] < 1.3
        assert all(fw < dw for fw, dw in zip(f["w1"], d["w1"], strict=True))
    assert floor["stability"]["rule"] == [None] * 8 and floor["stability"]["median"] is None
    # every member of the floor beats every damped member: the sign test sees it
    curve = next(iter(floor["per_member"]["mean_spectrum_error"]))
    test = sign_test(floor["per_member"]["mean_spectrum_error"][curve],
                     damped["per_member"]["mean_spectrum_error"][curve])
    assert (test["wins"], test["p_value"]) == (8, 2 / 256)
    json.dumps(damped)  # JSON-able


def test_intervals_hold_the_estimates_of_a_clearly_wrong_ensemble(synthetic):
    """Clearly nonzero metrics sit inside their bootstrap intervals (near zero, resampling only
    raises a distance, so the floor's may not)."""
    for window in synthetic["damped_report"]["windows"]:
        box = window["interval"]
        for curve, error in window["spectrum_error"].items():
            lo, hi = box["spectrum_error"][curve]
            assert lo <= error <= hi
            for band in ("mid", "high"):
                lo, hi = box["band_error"][curve][band]
                assert lo <= window["band_error"][curve][band] <= hi
            lo, hi = box["energy_ratio"][curve]
            assert lo <= window["energy_ratio"][curve] <= hi
        for (lo, hi), w1 in zip(box["w1"], window["w1"], strict=True):
            assert lo <= w1 <= hi


def test_report_keeps_the_resolved_shells_and_reproduces_brute_force_values(synthetic):
    """Against itself, in one window, the reference scores 0 and energy ratio 1; its spectrum and
    kinetic energy series agree with a direct float64 FFT computation."""
    system, ref = synthetic["system"], synthetic["ref"]
    report = evaluate(ref, ref, windows=1, sample=40)
    dk = 2 * math.pi / TrajectoryStore(ref).spec.domain_length
    shells = 9 if system == "kolmogorov" else 10  # ⌊0.65·16⌋
    np.testing.assert_allclose(report["k"], dk * np.arange(1, shells + 1), rtol=1e-12)
    assert report["resolved_wavenumber"] == pytest.approx(dk * (9 if system == "kolmogorov"
                                                                else 10.4), rel=1e-12)
    edges = [report["bands"][b] for b in ("low", "mid", "high")]
    assert edges[0][0] == report["k"][0] and edges[-1][1] == report["k"][-1]
    assert all(a[1] < b[0] for a, b in zip(edges[:-1], edges[1:], strict=True))
    window = report["windows"][0]
    for curve in report["reference_spectra"]:
        assert window["spectrum_error"][curve] == pytest.approx(0, abs=1e-14)
        assert window["w1"] == [0.0] * len(window["w1"])
        assert window["energy_ratio"][curve] == pytest.approx(1, rel=1e-12)
    assert report["stability"]["rule"] == [None] * 4
    if system == "kolmogorov":  # Kolmogorov: ½|u|² and E(k) from ω̂ directly
        w = np.fft.fft2(np.asarray(TrajectoryStore(ref).fields[:, :, 0], dtype=np.float64)) / 32**2
        m = np.fft.fftfreq(32, 1 / 32)
        k2 = m[:, None] ** 2 + m[None, :] ** 2
        density = 0.5 * np.abs(w) ** 2 / np.where(k2 > 0, k2, np.inf)
        energy = density.sum(axis=(-2, -1))  # (trajectory, time)
        np.testing.assert_allclose(report["reference_energy"]["energy"]["energy"], energy.mean(0),
                                   rtol=1e-10)
        own = np.stack([density[..., np.round(np.sqrt(k2)) == s].sum(-1).mean(1)
                        for s in range(1, 10)], axis=-1)  # (trajectory, shell)
        spectrum = own.mean(0)
        np.testing.assert_allclose(report["reference_spectra"]["energy"], spectrum, rtol=1e-10)
        np.testing.assert_allclose(report["per_member"]["last_window_spectrum_error"]["energy"],
                                   np.abs(np.log(own / spectrum)).mean(1), rtol=1e-10)
        np.testing.assert_allclose(report["per_member"]["last_window_energy_ratio"]["energy"],
                                   energy.mean(1) / energy.mean(), rtol=1e-10)
    for curve, series in report["reference_energy"]["energy"].items():
        trend = stationarity(series, report["reference_energy"]["time"])
        assert report["reference_energy"]["trend"][curve] == pytest.approx(trend, rel=1e-12)


def test_decorrelation_time_ratio(synthetic):
    """A second solver run decorrelates like the reference; an ensemble with lag-1 correlation
    0.95 instead of 0.8 about ln 0.8/ln 0.95 = 4.4 times slower."""
    assert synthetic["floor_report"]["autocorrelation"]["decorrelation_ratio"] == pytest.approx(
        1, abs=0.25)
    assert 3 < synthetic["slow_report"]["autocorrelation"]["decorrelation_ratio"] < 6


def test_stability_rules(tmp_path):
    """The reference's own trajectories never fail; a member ×10 or ×0.1 (energy ×100, ×0.01)
    fails by energy, a vanished one by energy and, with the energy rule off, by its infinite
    spectrum error (not 1); a flag fires at its step."""
    ref = _store(tmp_path / "ref.zarr", "kolmogorov", _fields("kolmogorov", 4, 40, seed=0))
    fields = np.concatenate([_fields("kolmogorov", 4, 40, seed=0), _fields("kolmogorov", 1, 40, 5)])
    fields[1, 5:] *= 10
    fields[2, 8:] *= 0.1
    fields[3, 3:] = 0
    path = _store(tmp_path / "ens.zarr", "kolmogorov", fields)
    store = TrajectoryStore(path, mode="r+")
    dt = store.spec.snapshot_dt
    # member 4 flagged at model step 12, which ends at (12 + 1) model steps of dt / 2
    store.root.create_array("flagged_at", shape=(5,), dtype="float64",
                            fill_value=np.nan)[4] = 13 * dt / 2
    store.root.attrs["rollout"] = {"save_every": 2}
    store.root["progress"][:] = store.spec.snapshots  # a finished rollout's record
    report = evaluate(path, ref, windows=4)
    stability = report["stability"]
    assert stability["rule"] == [None, "energy", "energy", "energy", "flag"]
    # flagged at model step 12 = within saved state 7 of 10 in the first window (save_every 2)
    assert [w["flagged"] for w in report["windows"]] == [0.2] * 4
    np.testing.assert_allclose(stability["times"][1:], [6 * dt, 9 * dt, 4 * dt, 13 * dt / 2])
    assert stability["times"][0] is None
    spectrum_only = evaluate(path, ref, windows=4, energy_bounds=(0.0, math.inf))["stability"]
    assert spectrum_only["rule"] == [None, "spectrum", "spectrum", "spectrum", "flag"]
    assert report["per_member"]["last_window_spectrum_error"]["energy"][3] == math.inf
    itself = evaluate(ref, ref, windows=4)
    assert itself["stability"]["rule"] == [None] * 4
    own = itself["per_member"]["last_window_energy_ratio"]["energy"]
    np.testing.assert_allclose(report["per_member"]["last_window_energy_ratio"]["energy"][:4],
                               np.array(own) * [1, 100, 0.01, 0], rtol=1e-5)
    assert report["per_member"]["stability_time"] == stability["times"]
    energy_only = evaluate(path, ref, windows=4, threshold=math.inf)["stability"]
    assert energy_only["rule"] == stability["rule"]


def test_start_skips_the_first_snapshots_like_a_store_without_them(tiny_kolmogorov, tmp_path):
    """A solver control store holds the members' initial state first: evaluating it from
    start=1 equals evaluating a store that never held that snapshot."""
    src = TrajectoryStore(tiny_kolmogorov)
    spec = dataclasses.replace(src.spec, snapshots=src.spec.snapshots - 1, trajectory_batch=1)
    store = TrajectoryStore.create(tmp_path / "later.zarr", spec)
    fields = np.asarray(src.fields[:])[:, 1:]
    for i in range(spec.trajectories):
        store.write(i, 0, fields[i:i + 1])
        store.root["progress"][i] = spec.snapshots
    store.finalise()
    skipped = evaluate(tiny_kolmogorov, tiny_kolmogorov, windows=2, start=1, resamples=50)
    without = evaluate(tmp_path / "later.zarr", tiny_kolmogorov, windows=2, resamples=50)
    assert skipped["snapshots"] == without["snapshots"] == spec.snapshots
    for a, b in zip(skipped["windows"], without["windows"], strict=True):
        assert a["spectrum_error"] == b["spectrum_error"] and a["w1"] == b["w1"]
        assert a["interval"] == b["interval"]
    assert skipped["autocorrelation"]["ensemble"] == without["autocorrelation"]["ensemble"]
    assert skipped["stability"]["times"] == without["stability"]["times"]
    with pytest.raises(ValueError, match="start must lie in"):
        evaluate(tiny_kolmogorov, tiny_kolmogorov, start=src.spec.snapshots)
