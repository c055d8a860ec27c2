"""Refinement policies beyond the published ones: level floors, a stride, the lagged long frame
and the deterministic (DDIM) walk. The engine equals the reference member by member under each,
and each does exactly what it says on small analytic cases."""

import math

import pytest
import torch

from sns_engine.config import ConfigError, RolloutConfig
from sns_engine.diffusion.paths import Settings, get_path
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import CounterNoise, Denoiser, DenoiserOutput, refiner_denoiser
from sns_engine.engine.reference import reference_rollout, walk
from sns_engine.engine.rollout import Engine, drive

from .test_engine import SCHEDULE, TOL, initial, models, run_engine
from .toys import ToyEmulator, ToyRefiner

POLICIES = [
    dict(level_floor=12),
    dict(level_floor=12, level_floor_y=6),
    dict(every=3),
    dict(long="lagged", lag=2),
    dict(walk="ddim"),
    dict(level_floor=8, every=2, long="lagged", lag=3, walk="ddim"),
]


@pytest.mark.parametrize("path", ["left_down", "fix_short", "diagonal", "thermalizer"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_engine_equals_reference_under_each_policy(path, policy):
    cfg = RolloutConfig(path=path, steps=7, seed=11, threshold=0, noise_limit=90, bound=1e6, **policy)
    x0 = initial(6, seed=4)
    emulator, denoiser = models(path)
    ref = reference_rollout(emulator, denoiser, SCHEDULE, x0, cfg, CounterNoise(11))
    engine, states, levels, moves = run_engine(x0, cfg)
    torch.testing.assert_close(states, ref.states, **TOL)
    torch.testing.assert_close(levels, ref.levels)
    torch.testing.assert_close(moves, ref.moves)
    torch.testing.assert_close(engine.flags.cpu(), ref.flags)


def test_a_floor_raises_start_levels_but_the_gate_reads_the_estimates():
    n_x, n_y = torch.tensor([0, 3, 9, 20, 2]), torch.tensor([1, 0, 7, 2, 9])
    s = Settings(100, threshold=3, heads="x", floor_x=10, floor_y=4)
    plan = get_path("left_down").plan(n_x, n_y, s)
    refined = n_x >= 3
    torch.testing.assert_close(plan.start_x, torch.where(refined, n_x.clamp(min=10), n_x).int())
    torch.testing.assert_close(plan.start_y, torch.where(refined, n_y.clamp(min=4), n_y).int())
    # left_down: y × its start, then x × its start; members under the threshold do not walk
    expected = torch.stack([n_y.clamp(min=4), n_x.clamp(min=10)], 1) * refined[:, None]
    torch.testing.assert_close(plan.counts, expected.int())


def test_a_floored_frame_is_renoised_and_walked_from_the_floor():
    """renoise=False normally walks from the estimate without re-noising; a floor above the
    estimate re-noises the frame up to the floor, so the estimate's forward cannot be reused."""
    x0 = initial(8, seed=2)
    plain = RolloutConfig(path="left_down", steps=2, renoise=False, threshold=0)
    floored = RolloutConfig(path="left_down", steps=2, renoise=False, threshold=0, level_floor=30)
    _, _, levels, moves = run_engine(x0, plain)
    engine, _, _, floored_moves = run_engine(x0, floored)
    assert (floored_moves >= 30).all() and (floored_moves > moves).any()
    assert engine.stats.level_passes == 2          # a levels-only estimate each step


def test_every_refines_steps_0_m_2m_and_leaves_the_rest_to_the_emulator():
    x0 = initial(5, seed=8)
    cfg = RolloutConfig(path="left_down", steps=7, threshold=0, every=3)
    _, states, levels, moves = run_engine(x0, cfg)
    refined = torch.tensor([t % 3 == 0 for t in range(7)])
    assert (levels[:, refined] >= 0).all() and (levels[:, ~refined] == -1).all()
    assert (moves[:, ~refined] == 0).all() and (moves[:, refined] > 0).any()
    emulator = ToyEmulator()
    with torch.no_grad():   # an unrefined step is exactly the emulator's proposal
        torch.testing.assert_close(states[:, 1], emulator(states[:, 0]), **TOL)
        torch.testing.assert_close(states[:, 5], emulator(states[:, 4]), **TOL)


class Recorder:
    """A toy refiner that records the long frame of each step's estimate (one per step: with
    re-noising the estimate is a levels-only pass)."""

    def __init__(self):
        self.toy, self.longs = ToyRefiner(num_levels=100), []

    def estimate(self, long, y, x):
        self.longs.append(long.clone())
        return self.toy.estimate(long, y, x)


def test_lagged_long_frame_is_the_state_lag_steps_back():
    x0 = initial(1, seed=9)
    cfg = RolloutConfig(path="left_down", steps=6, threshold=0, long="lagged", lag=2)
    rec = Recorder()
    denoiser = Denoiser(rec.toy, lambda *a: None, rec.estimate)
    ref = reference_rollout(ToyEmulator(), denoiser, SCHEDULE, x0, cfg, CounterNoise(0))
    states = torch.cat([x0[:, None], ref.states], 1)[0]           # x_0 … x_6
    estimates = rec.longs
    assert len(estimates) == 6
    for t, long in enumerate(estimates):
        torch.testing.assert_close(long[0], states[max(t - 2, 0)])
    assert not torch.equal(estimates[3], x0)


def test_lagged_engine_resumes_exactly_from_its_checkpoint():
    x0 = initial(4, seed=12)
    cfg = RolloutConfig(path="left_down", steps=6, threshold=0, long="lagged", lag=4, seed=3)
    emulator, denoiser = models("left_down")
    whole = Engine(emulator, denoiser, SCHEDULE, x0, cfg, graphs=False)
    drive(whole, 6, 1)
    first = Engine(emulator, denoiser, SCHEDULE, x0, cfg, graphs=False)
    drive(first, 3, 1)
    saved = {k: v.clone() for k, v in first.state_tensors().items()}
    assert saved["history"].shape == (4, 4, *x0.shape[1:])
    second = Engine(emulator, denoiser, SCHEDULE, torch.zeros_like(x0), cfg, graphs=False)
    second.load_state(saved, 3)
    drive(second, 6, 1)
    torch.testing.assert_close(second.x, whole.x, **TOL)


def test_policy_settings_are_checked_before_any_work():
    for bad, words in ((dict(every=0), "every must be positive"), (dict(level_floor=-1), "level_floor"),
                       (dict(long="past"), "long must be one of"), (dict(walk="euler"), "walk must be"),
                       (dict(lag=0), "lag must be positive")):
        with pytest.raises(ConfigError, match=words):
            RolloutConfig(**bad)
    with pytest.raises(ValueError, match="long='lagged' needs lag"):
        Engine(ToyEmulator(), refiner_denoiser(ToyRefiner(num_levels=100)), SCHEDULE, initial(2),
               RolloutConfig(long="lagged"), graphs=False)


def test_rollout_api_takes_the_policies_and_the_bundle_lag(tmp_path):
    from sns_engine.api import rollout

    with pytest.raises(ConfigError, match="level_floor=5000 is above the bundle's top level"):
        rollout(batch=1, steps=1, level_floor=5000, quiet=True)
    r = rollout(batch=2, steps=2, long="lagged", every=2, level_floor=3, walk="ddim", quiet=True)
    assert (r.levels[:, 1] == -1).all() and (r.moves[:, 0] >= 3).all()


# ---------------------------------------------------------------- the DDIM walk, exactly
@pytest.mark.parametrize("k", [1, 5, 40])
def test_ddim_walk_with_the_true_noise_returns_the_clean_frame(k):
    """η = 0: a frame noised with ε and walked with ε̂ = ε stays on its noise line,
    x_n = √ᾱ_n x_0 + √(1−ᾱ_n) ε, at every level, so it ends exactly at x_0 (DDPM would not)."""
    schedule = CosineSchedule(40)
    g = torch.Generator().manual_seed(k)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    x_k = schedule.q_sample(x0, torch.full((3,), k), eps)
    true = Denoiser.from_forward(lambda long, y, x: DenoiserOutput(
        torch.zeros_like(y), eps, torch.zeros(3, 41), torch.zeros(3, 41)))
    plan = get_path("fix_short").plan(torch.full((3,), k), torch.zeros(3, dtype=torch.long), Settings(40))
    member, step = torch.arange(3), torch.zeros(3, dtype=torch.long)
    _, ddim = walk(true, schedule, x0, x0, x_k, plan, CounterNoise(1), member, step, kind="ddim")
    torch.testing.assert_close(ddim, x0, rtol=1e-4, atol=1e-4)
    _, ddpm = walk(true, schedule, x0, x0, x_k, plan, CounterNoise(1), member, step, kind="ddpm")
    if k > 1:
        assert (ddpm - x0).abs().max() > 1e-2


def test_ddim_walk_with_the_exact_denoiser_of_unit_gaussian_data_is_a_product_of_cosines():
    """Data N(0, I): x_n ~ N(0, I) at every level and the optimal ε̂ = √(1−ᾱ_n)·x_n, so a DDIM step
    is x_{n−1} = cos(θ_{n−1} − θ_n)·x_n with ᾱ_n = cos²θ_n, and a walk from k multiplies by the
    product of those cosines."""
    schedule, k = CosineSchedule(40), 25
    levels = iter(range(k, 0, -1))

    def exact(long, y, x):
        n = next(levels)
        eps = (1 - schedule.alpha_bar.double()[n]).sqrt() * x.double()
        return DenoiserOutput(torch.zeros_like(y), eps.float(), torch.zeros(1, 41), torch.zeros(1, 41))

    x_k = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plan = get_path("fix_short").plan(torch.tensor([k]), torch.tensor([0]), Settings(40))
    _, x0 = walk(Denoiser.from_forward(exact), schedule, x_k, x_k, x_k, plan, CounterNoise(0),
                 torch.arange(1), torch.zeros(1, dtype=torch.long), kind="ddim")
    theta = torch.arccos(schedule.alpha_bar.double().sqrt())
    factor = math.prod(math.cos(theta[n - 1] - theta[n]) for n in range(1, k + 1))
    torch.testing.assert_close(x0.double(), factor * x_k.double(), rtol=1e-5, atol=1e-6)
    assert factor < 0.999   # the discretisation shrinks the frame measurably: not the identity
