"""Each path visits exactly the lattice points of the (n_x, n_y) plane it should."""

import pytest
import torch

from sns_engine.diffusion.paths import PATHS, Settings, get_path, lattice_points

N = 50


def points(name, n_x, n_y, **kw):
    plan = get_path(name).plan(torch.tensor([n_x]), torch.tensor([n_y]), Settings(N, **kw))
    return lattice_points(plan)


def test_left_down_is_y_first_then_x():
    assert points("left_down", 2, 3) == [(2, 3), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0)]


def test_down_left_is_x_first_then_y():
    assert points("down_left", 2, 3) == [(2, 3), (1, 3), (0, 3), (0, 2), (0, 1), (0, 0)]


def test_fix_short_holds_y_at_its_estimate():
    # the authors' denoising_with_fixed_short: y re-noised to n̂_y and held there while x walks
    assert points("fix_short", 3, 7) == [(3, 7), (2, 7), (1, 7), (0, 7)]


def test_gencast_walks_x_next_to_a_clean_y():
    assert points("gencast", 3, 7) == [(3, 0), (2, 0), (1, 0), (0, 0)]


@pytest.mark.parametrize("n_x,n_y,expected", [
    (4, 2, [(4, 2), (3, 2), (2, 2), (1, 1), (0, 0)]),
    (1, 3, [(1, 3), (1, 2), (1, 1), (0, 0)]),
    (2, 2, [(2, 2), (1, 1), (0, 0)]),
])
def test_diagonal_brings_the_higher_down_then_both(n_x, n_y, expected):
    assert points("diagonal", n_x, n_y) == expected


def test_acdm_and_generate_start_from_pure_noise():
    acdm = points("acdm", 3, 9)
    assert acdm[0] == (N, N) and acdm[-1] == (0, 0) and len(acdm) == N + 1
    assert all(a - b == 1 for (a, _), (b, _) in zip(acdm, acdm[1:], strict=False))
    gen = points("generate", 3, 9)
    assert gen[0] == (N, 9) and gen[-1] == (0, 9) and len(gen) == N + 1


def test_thermalizer_walks_from_its_estimate_to_stop_above_start_only():
    # the authors' therm_algo: members with n̂ > start are re-noised to n̂ and denoised to stop
    assert points("thermalizer", 20, 0, thermalizer_start=10, thermalizer_stop=4) == [
        (n, 0) for n in range(20, 3, -1)]
    assert points("thermalizer", 11, 0, thermalizer_start=10, thermalizer_stop=4)[-1] == (4, 0)
    assert points("thermalizer", 10, 0, thermalizer_start=10, thermalizer_stop=4) == [(10, 0)]
    # its gate replaces the activation threshold, and y is never walked or re-noised
    assert points("thermalizer", 20, 7, threshold=30, thermalizer_start=10, thermalizer_stop=4)[-1] == (4, 0)
    assert PATHS["thermalizer"].flags_noise_limit and not PATHS["left_down"].flags_noise_limit
    assert Settings(N).thermalizer_start == 11 and Settings(N).thermalizer_stop == 5  # their 10, 4


@pytest.mark.parametrize("name", sorted(set(PATHS) - {"emulator", "thermalizer"}))
def test_activation_threshold_skips_low_members(name):
    assert points(name, 4, 9, threshold=5) == [(4, 9)]
    assert len(points(name, 5, 9, threshold=5)) > 1
    # QG as the authors run it: either head above the threshold refines the member
    assert len(points(name, 4, 9, threshold=5, heads="either")) > 1
    assert points(name, 4, 3, threshold=5, heads="either") == [(4, 3)]


def test_emulator_path_never_moves_and_plans_are_vectorised():
    assert points("emulator", 30, 30) == [(30, 30)]
    plan = get_path("left_down").plan(torch.tensor([3, 0, 7]), torch.tensor([1, 4, 0]), Settings(N))
    assert plan.total.tolist() == [4, 4, 7]
    with pytest.raises(ValueError, match="unknown path 'spiral'"):
        get_path("spiral")
