"""The solver's climatology and each member's drift from it, against a direct computation from
the same snapshots."""

import math

import numpy as np
import pytest
import torch

from sns_engine.data import TrajectoryStore
from sns_engine.data.store import StoreError
from sns_engine.diagnostics import spectra
from sns_engine.diagnostics.climatology import climatology, drift
from sns_engine.diagnostics.evaluate import resolved_wavenumber


def _direct(path):
    """Every snapshot's resolved energy spectrum (B, T, K) and kinetic energy (B, T), float64."""
    store = TrajectoryStore(path)
    fields = torch.from_numpy(np.asarray(store.fields[:])).double()
    k, e = spectra.energy_spectrum(fields[:, :, 0], length=store.spec.domain_length)
    keep = (k > 0) & (k <= resolved_wavenumber(store.spec) + 1e-9)
    return k[keep], e[..., keep], e.sum(-1) * (2 * math.pi / store.spec.domain_length)


def test_climatology_and_drift_equal_the_direct_computation(tiny_kolmogorov):
    k, spectrum, energy = _direct(tiny_kolmogorov)
    climate = climatology(tiny_kolmogorov, sample=10_000)           # every snapshot
    assert climate["k"] == k.tolist() and climate["snapshots"] == spectrum.shape[1]
    mean = spectrum.mean(dim=(0, 1))
    np.testing.assert_allclose(climate["spectra"]["energy"], mean.numpy(), rtol=1e-12)
    assert climate["energy"]["energy"] == pytest.approx(float(energy.mean()), rel=1e-12)
    own = spectra.log_spectrum_error(spectrum, mean).flatten()
    assert climate["spectrum_error"]["median"] == pytest.approx(float(own.median()), rel=0.05)
    spread = climate["spectrum_error"]
    assert spread["p5"] < spread["median"] < spread["p95"]

    result = drift(tiny_kolmogorov, climate, members=3)
    np.testing.assert_allclose(result["spectrum_error"],
                               spectra.log_spectrum_error(spectrum[:3], mean).numpy(), rtol=1e-10)
    np.testing.assert_allclose(result["energy_ratio"], (energy[:3] / energy.mean()).numpy(), rtol=1e-10)
    assert len(result["time"]) == spectrum.shape[1]


def test_climatology_of_fewer_snapshots_differs_and_mismatches_are_refused(tiny_kolmogorov):
    climate = climatology(tiny_kolmogorov, sample=4)
    assert climate["snapshots"] == 4 and climate["time"][0] < climate["time"][1]
    other = {**climate, "grid": 64}
    with pytest.raises(StoreError, match="climatology is of kolmogorov at 64"):
        drift(tiny_kolmogorov, other)
    shifted = {**climate, "k": [x + 0.5 for x in climate["k"]]}
    with pytest.raises(StoreError, match="resolved shells differ"):
        drift(tiny_kolmogorov, shifted)


def test_an_ensemble_drifts_from_its_initial_state_and_is_no_climatology(tmp_path):
    from sns_engine.api import DEFAULT_BUNDLE, rollout
    from sns_engine.calibration import climate_of

    out = tmp_path / "e.zarr"
    rollout(batch=2, steps=3, path="emulator", out=out, quiet=True)
    climate = climate_of(DEFAULT_BUNDLE)
    run = drift(out, climate)
    assert run["time"][0] == 0.0 and len(run["time"]) == 4       # t = 0 and the 3 steps
    last = torch.from_numpy(np.asarray(TrajectoryStore(out).fields[:, -1, 0])).double()
    k, e = spectra.energy_spectrum(last, length=2 * math.pi)
    keep = (k > 0) & (k <= 31)                                      # the 64² store's resolved shells
    expected = spectra.log_spectrum_error(e[:, keep], torch.tensor(climate["spectra"]["energy"],
                                                                   dtype=torch.float64))
    np.testing.assert_allclose([m[-1] for m in run["spectrum_error"]], expected.numpy(), rtol=1e-5)
    with pytest.raises(StoreError, match="ensemble store"):
        climatology(out)
