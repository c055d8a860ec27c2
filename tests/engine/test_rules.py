"""The refinement rules the engine and the oracle share (engine.rules), checked on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from sns_engine.config import RolloutConfig
from sns_engine.diffusion.paths import X, Y, get_path
from sns_engine.engine.rules import (
    NOISE_LIMIT,
    NONFINITE,
    OUT_OF_BOUND,
    describe_activation,
    refinement,
    state_flags,
    with_activation,
)

N = 1000


def test_state_flags_name_nonfinite_and_out_of_bound_members():
    new = torch.randn(4, 2, 8, 8)
    new[1, 0, 3, 3] = math.nan
    new[2, 1, 0, 0] = 51.0
    new[3, 0, 5, 5] = -math.inf
    assert state_flags(new, bound=50.0).tolist() == [0, NONFINITE, OUT_OF_BOUND, NONFINITE]
    assert state_flags(new[[0, 2]], bound=51.0).tolist() == [0, 0]
    assert state_flags(new, bound=50.0).dtype == torch.int32


def test_left_down_walks_y_then_x_and_freezes_dead_members():
    cfg = RolloutConfig(path="left_down", threshold=0)
    n_x, n_y = torch.tensor([3, 5, 0]), torch.tensor([2, 1, 4])
    alive = torch.tensor([True, True, False])
    step = refinement(get_path("left_down"), n_x, n_y, cfg, N, alive)
    assert step.plan.moves[0].tolist() == [Y, X]
    assert step.counts.tolist() == [[2, 3], [1, 5], [0, 0]]
    assert step.total.tolist() == [5, 6, 0]
    assert not step.over_limit.any()


def test_the_thermalizer_flags_members_above_its_noise_limit_instead_of_walking_them():
    cfg = RolloutConfig(path="thermalizer", noise_limit=20)
    n_x = torch.tensor([30, 15, 25, 3])
    alive = torch.tensor([True, True, False, True])
    step = refinement(get_path("thermalizer"), n_x, n_x, cfg, N, alive)
    assert step.over_limit.tolist() == [True, False, False, False]   # the dead one is not flagged
    # default start 11 / stop 5: the member at 15 walks 10 levels, the one at 3 is not gated in
    assert step.total.tolist() == [0, 10, 0, 0]
    assert NOISE_LIMIT not in state_flags(torch.zeros(1, 1, 2, 2), 1.0).tolist()


@pytest.mark.parametrize("renoise", [False, True])
def test_renoise_levels(renoise):
    cfg = RolloutConfig(path="left_down", threshold=0, renoise=renoise)
    n_x, n_y = torch.tensor([4, 0, 7]), torch.tensor([2, 3, 0])
    step = refinement(get_path("left_down"), n_x, n_y, cfg, N, torch.tensor([True, True, False]))
    # left_down starts at the estimate: only `renoise` asks for fresh noise, and never at level 0
    # or for a member that does not walk (the dead third one)
    expected = [4, 0, 0] if renoise else [0, 0, 0]
    assert step.renoise_levels(n_x, step.plan.start_x, renoise).tolist() == expected
    # acdm starts at pure noise, above every estimate: re-noised whatever `renoise` says
    acdm = refinement(get_path("acdm"), n_x, n_y, cfg, N, torch.ones(3, dtype=torch.bool))
    assert acdm.renoise_levels(n_x, acdm.plan.start_x, renoise).tolist() == [N, N, N]


def test_activation_comes_from_the_bundle_only_where_unset():
    qg = {"threshold": 7, "threshold_heads": "either"}
    cfg = with_activation(RolloutConfig(), qg)
    assert (cfg.threshold, cfg.threshold_heads) == (7, "either")
    assert "max(n̂_x, n̂_y) ≥ 7" in describe_activation(cfg)
    mine = with_activation(RolloutConfig(threshold=0), qg)
    assert mine.threshold == 0 and describe_activation(mine) == "refining every member every step"
