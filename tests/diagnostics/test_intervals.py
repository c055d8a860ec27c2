"""Bootstrap intervals over members: resampling, percentile intervals, and the cheap W1 of
resampled members against its exact recomputation."""

import math

import numpy as np
import pytest
import torch

from sns_engine.diagnostics import DiagnosticsError, wasserstein1
from sns_engine.diagnostics.intervals import (
    interval,
    mixture_w1,
    quantile_atoms,
    resample,
    resampled_means,
)
from sns_engine.diagnostics.spectra import log_spectrum_error


def test_resample_is_reproducible_and_draws_with_replacement():
    draws = resample(7, 500, seed=3)
    assert draws.shape == (500, 7) and draws.min() == 0 and draws.max() == 6
    np.testing.assert_array_equal(draws, resample(7, 500, seed=3))
    assert not np.array_equal(draws, resample(7, 500, seed=4))
    assert any(len(set(row)) < 7 for row in draws)  # repeats: with replacement


def test_interval_takes_sample_values_and_counts_nan_as_worst():
    samples = np.random.default_rng(0).permutation(1000).astype(float)
    # quantile positions 0.05·999 = 49.95 and 0.95·999 = 949.05: the lower and higher neighbours
    assert interval(samples) == [49.0, 950.0]
    assert interval(samples, level=0.5) == [249.0, 750.0]
    samples[samples < 100] = math.nan  # sorted: 100 … 999, then 100 × inf
    assert interval(samples) == [149.0, math.inf]


def test_resampled_means_match_a_loop():
    values = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    draws = resample(6, 20, seed=2)
    means = resampled_means(values, draws)
    assert means.shape == (20, 4)
    for r in range(20):
        expected = sum(values[i] for i in draws[r]) / 6
        torch.testing.assert_close(means[r], expected, rtol=1e-14, atol=1e-15)
    values[2] = math.nan  # only the resamples drawing member 2 fail
    failed = torch.isnan(resampled_means(values, draws)).any(1).numpy()
    np.testing.assert_array_equal(failed, (draws == 2).any(1))


def test_quantile_atoms_by_hand():
    values = np.array([[4.0, 1.0, 3.0, 2.0], [0.5, -1.0, 8.0, 2.0], [1.0, math.nan, 0.0, 0.0]])
    # levels ¼ and ¾ of 4 sorted values: indices ⌊0.5·2⌋ = 1 and ⌊1.5·2⌋ = 3
    atoms = quantile_atoms(values, 2)
    np.testing.assert_array_equal(atoms[:2], [[2.0, 4.0], [0.5, 8.0]])
    assert np.isnan(atoms[2]).all()
    np.testing.assert_array_equal(quantile_atoms(values[:2], 9), np.sort(values[:2], axis=1))


def _members(n, size, seed):
    """Members whose distributions differ (shifted and scaled normals), as a real ensemble's."""
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randn(n, 1, generator=gen, dtype=torch.float64) * 0.3
    scale = 1 + 0.2 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    return shift + scale * torch.randn(n, size, generator=gen, dtype=torch.float64)


def test_mixture_w1_equals_w1_of_the_resampled_fields():
    """With every value as an atom, the W1 of a resample is that of the drawn members' pooled
    values against the reference, exactly."""
    members = _members(5, 40, seed=3)
    reference = 0.2 + 1.1 * torch.randn(100, generator=torch.Generator().manual_seed(4),
                                        dtype=torch.float64)
    draws = resample(5, 60, seed=5)
    fast = mixture_w1(quantile_atoms(members, 40), draws, reference.numpy())
    exact = [wasserstein1(members[torch.from_numpy(row)], reference).item() for row in draws]
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=0)


def test_mixture_w1_with_few_atoms_approximates_the_exact_value():
    """64 atoms for 4096 values per member: the error (the atoms under-represent the tails) is
    a small part of the distance and of the spread of the resamples (what the interval
    measures)."""
    members = _members(6, 4096, seed=6)
    reference = 0.1 + torch.randn(20_000, generator=torch.Generator().manual_seed(7),
                                  dtype=torch.float64)
    draws = resample(6, 40, seed=8)
    fast = mixture_w1(quantile_atoms(members, 64), draws, quantile_atoms(reference[None], 384)[0])
    exact = np.array([wasserstein1(members[torch.from_numpy(row)], reference).item()
                      for row in draws])
    assert np.abs(fast - exact).max() < 0.02 * exact.mean()
    assert np.abs(fast - exact).max() < 0.1 * exact.std()


def test_mixture_w1_scores_a_failed_member_inf():
    members = _members(4, 30, seed=9).numpy()
    reference = _members(1, 50, seed=10)[0].numpy()
    draws = resample(4, 50, seed=11)
    clean = mixture_w1(members, draws, reference)
    members[1, 7] = math.nan
    failed = mixture_w1(quantile_atoms(members, 30), draws, reference)
    drawn = (draws == 1).any(1)
    assert np.isinf(failed[drawn]).all() and drawn.any() and not drawn.all()
    np.testing.assert_allclose(failed[~drawn], clean[~drawn], rtol=1e-12)


def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_members():
    """Member spectra scattered around a biased mean: the interval of the ensemble-mean spectrum
    error holds the point estimate, and 16 times the members make it ≈ 4 times narrower."""
    reference = torch.linspace(1.0, 0.01, 20, dtype=torch.float64)
    widths = []
    for n in (10, 160):
        gen = torch.Generator().manual_seed(n)
        member_spectra = reference * torch.exp(0.3 + 0.5 * torch.randn(n, 20, generator=gen,
                                                                       dtype=torch.float64))
        point = log_spectrum_error(member_spectra.mean(0), reference).item()
        lo, hi = interval(log_spectrum_error(resampled_means(member_spectra, resample(n)),
                                             reference))
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < 0.4 * widths[0]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: resample(0, 10), "positive"),
    (lambda: interval([], 0.9), "samples"),
    (lambda: interval([1.0], 1.0), "level"),
    (lambda: quantile_atoms(np.ones(3), 2), r"\(n, N\)"),
    (lambda: mixture_w1(np.ones((2, 3)), np.zeros((4, 2), int), np.array([math.nan])), "finite"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(DiagnosticsError, match=message):
        call()
