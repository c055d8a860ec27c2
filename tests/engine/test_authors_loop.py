"""Conformance: our engine and reference equal an independent transcription of the authors' loop.

The transcription (bench/authors_loop.py, also the benchmark's baseline) re-states in their terms
what QiLiu6/SNS runs: their drivers, `ratio_class_both`, re-noising to the estimates and the
masked loops of `SNS_NS.py`, and the Thermalizer's `therm_algo`. Two things differ from their
code on purpose, and only these: every member starts at its own level (`published_start=False`;
their loops start at max − 1, so the member at the batch maximum skips its first step — their QG
code fixes it the same way), and a member estimated clean (our level 0, which their labels lack)
is neither re-noised nor walked. Their classes are our levels − 1: the transcription converts at
the estimate, so the label mapping is under test too. Random numbers come from our counter-based
source with the keys the engine uses, so the comparison is exact up to float32 rounding.
"""

import pytest
import torch

from bench.authors_loop import AuthorsLoop
from sns_engine.config import RolloutConfig
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import Engine, drive

from .toys import ToyEmulator, ToyRefiner, ToyThermalizer

T = 100                                 # diffusion steps (short walks keep the test fast)
SEED = 5
TOL = dict(rtol=1e-4, atol=1e-4)
THEIRS = AuthorsLoop(T, CounterNoise(SEED), published_start=False)


def initial_states(batch=10, seed=4):
    """Amplitudes that make the toy heads estimate levels from 0 to ≥ 50 (see toys.ToyRefiner)."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.05 + 2.0 * torch.arange(batch).float() / batch
    return torch.randn(batch, 1, 8, 8, generator=g) * scale[:, None, None, None]


def ours(path, emulator, denoiser, x0, cfg):
    schedule = CosineSchedule(T)
    ref = reference_rollout(emulator, denoiser, schedule, x0, cfg, CounterNoise(SEED))
    engine = Engine(emulator, denoiser, schedule, x0, cfg, graphs=False)
    states, levels, _ = drive(engine, cfg.steps, 1)
    return ref, torch.stack(states, 1), torch.stack(levels, 1)


@pytest.mark.parametrize("path", ["fix_short", "left_down", "down_left", "diagonal"])
@pytest.mark.parametrize("activation", ["kolmogorov", "qg"])
def test_engine_and_reference_equal_the_authors_loop(path, activation):
    emulator = ToyEmulator()
    denoiser = refiner_denoiser(ToyRefiner(num_levels=T, max_level=80))
    x0 = initial_states()
    # Kolmogorov: every member, every step; QG: either head's class > 5 ⇔ our level ≥ 7
    threshold, heads, their_threshold = (0, "x", None) if activation == "kolmogorov" else (7, "either", 5)
    cfg = RolloutConfig(path=path, steps=2, seed=SEED, threshold=threshold, threshold_heads=heads,
                        bound=1e6)
    theirs = THEIRS.rollout(path, emulator, denoiser, x0, cfg.steps, their_threshold)
    ref, engine_states, levels = ours(path, emulator, denoiser, x0, cfg)
    torch.testing.assert_close(ref.states, theirs, **TOL)
    torch.testing.assert_close(engine_states, theirs, **TOL)
    # the members really sit at mixed levels, clean ones and far-off ones included
    n_x, n_y = levels[..., 0].flatten(), levels[..., 1].flatten()
    assert (n_x == 0).any() and (torch.maximum(n_x, n_y) >= 50).any()
    assert len(set(n_x.tolist())) >= 4 and not torch.equal(n_x, n_y)
    if activation == "qg":
        assert (torch.maximum(n_x, n_y) < 7).any()       # some members are left as proposed


def test_engine_and_reference_equal_the_authors_thermalizer():
    emulator = ToyEmulator()
    thermalizer = ToyThermalizer(num_levels=T)
    x0 = initial_states(seed=6)
    cfg = RolloutConfig(path="thermalizer", steps=2, seed=SEED, noise_limit=T, bound=1e6)
    theirs = THEIRS.thermalize(emulator, thermalizer, x0, cfg.steps,
                               start=cfg.thermalizer_start - 1, stop=cfg.thermalizer_stop - 1)
    ref, engine_states, levels = ours("thermalizer", emulator, thermalizer_denoiser(thermalizer), x0, cfg)
    torch.testing.assert_close(ref.states, theirs, **TOL)
    torch.testing.assert_close(engine_states, theirs, **TOL)
    n_x = levels[..., 0]
    assert (n_x > cfg.thermalizer_start).any() and (n_x <= cfg.thermalizer_start).any()
    assert (n_x >= 50).any()
