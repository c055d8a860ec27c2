"""Conformance: our engine and reference equal an independent transcription of the authors' loop.

`authors_rollout` below re-states, in their terms, what QiLiu6/SNS runs (docs/method.md):
`SNS_NS_refinement` / `SNS_QG_refinement` (emulator proposal, `ratio_class_both` on (initial
condition, previous state, proposal), every member refined or those with a class above the QG
threshold), re-noising to the estimates (`forward_diff=True`), and the masked loops of
`SNS_NS.py` — a descending level index i, a boolean mask of the members still active, a gather,
one network call, their update formula, a scatter — and the Thermalizer's `therm_algo` /
`denoise_heterogen`. Two things differ from their code on purpose, and only these: every member
starts at its own level (their loops start at max − 1, so the member at the batch maximum skips
its first step; their QG code fixes it the same way), and a member estimated clean (our level 0,
which their labels lack) is neither re-noised nor walked. Their classes are our levels − 1: the
transcription converts at the estimate, so the label mapping is under test too. Random numbers
come from our counter-based source with the keys the engine uses, so the comparison is exact up
to float32 rounding.
"""

import math

import pytest
import torch

from sns_engine.config import RolloutConfig
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import Engine, drive
from sns_engine.ops import rng

from .toys import ToyEmulator, ToyRefiner, ToyThermalizer

T = 100                                 # diffusion steps (short walks keep the test fast)
SEED = 5
TOL = dict(rtol=1e-4, atol=1e-4)


def authors_tables(timesteps: int, epsilon: float = 0.008) -> dict[str, torch.Tensor]:
    """Their cosine schedule: betas clipped at 0.999, 0-based tables (class k = ᾱ[k])."""
    steps = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps + epsilon) / (1.0 + epsilon)) * math.pi * 0.5) ** 2
    betas = torch.clip(1.0 - f[1:] / f[:timesteps], 0.0, 0.999)
    alphas = 1.0 - betas
    return {"betas": betas, "alphas": alphas, "alphas_cumprod": torch.cumprod(alphas, 0)}


TABLES = authors_tables(T)


def forward_diffusion(x0, classes, noise):
    """Their `_forward_diffusion`: x0 noised to class k (ᾱ[k])."""
    ab = TABLES["alphas_cumprod"][classes].float().reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def reverse(frame, eps, i, noise):
    """Their reverse step at index i (`_reverse_diffusion_fix_*_lag`, `_reverse_diffusion`)."""
    a, ab, b = (TABLES[k][i].float() for k in ("alphas", "alphas_cumprod", "betas"))
    mean = (1.0 / a.sqrt()) * (frame - ((1.0 - a) / (1.0 - ab).sqrt()) * eps)
    std = (b * (1.0 - TABLES["alphas_cumprod"][i - 1].float()) / (1.0 - ab)).sqrt() if i > 0 else 0.0
    return mean + std * noise


def masked_loop(frames, classes, step, members, update, low=-1):
    """for i in range(max(classes), low, −1): active = classes ≥ i; gather; update; scatter."""
    for i in range(int(classes.max()), low, -1):
        active = classes >= i
        if active.any():
            frames[active] = update(frames[active], i, members[active], step)


def authors_refine(path, denoiser, noise, long, prev, proposal, classes, members, step):
    """One refinement of `SNS_NS.py` (path = their denoise_mode) on the selected members."""
    p_y, p_x = classes[:, 0], classes[:, 1]
    y, x = prev.clone(), proposal.clone()
    for frame, p, stream in ((x, p_x, rng.STREAM_RENOISE_X), (y, p_y, rng.STREAM_RENOISE_Y)):
        keep = p >= 0                                   # our clean class: nothing to re-noise
        z = noise(members[keep], step, p[keep] + 1, stream, tuple(frame.shape[1:]))
        frame[keep] = forward_diffusion(frame[keep], p[keep], z)
    cond = torch.stack([long, y, x], dim=1)             # x_in = cat((long, short, t))

    def model(batch):
        out = denoiser(batch[:, 0], batch[:, 1], batch[:, 2])
        return out.eps_y, out.eps_x

    def move(which):
        def update(batch, i, ids, t):
            eps_y, eps_x = model(batch)
            batch = batch.clone()
            level = torch.full_like(ids, i + 1)
            if which in ("x", "both"):
                batch[:, 2] = reverse(batch[:, 2], eps_x, i, noise(ids, t, level, rng.STREAM_X,
                                                                    tuple(batch.shape[2:])))
            if which in ("y", "both"):
                batch[:, 1] = reverse(batch[:, 1], eps_y, i, noise(ids, t, level, rng.STREAM_Y,
                                                                    tuple(batch.shape[2:])))
            return batch
        return update

    if path == "fix_short":                              # denoising_with_fixed_short
        masked_loop(cond, p_x, step, members, move("x"))
    elif path == "left_down":                            # denoising_left_down
        masked_loop(cond, p_y, step, members, move("y"))
        masked_loop(cond, p_x, step, members, move("x"))
    elif path == "down_left":                            # denoising_down_left
        masked_loop(cond, p_x, step, members, move("x"))
        masked_loop(cond, p_y, step, members, move("y"))
    elif path == "diagonal":                             # denoising_SNS
        hi, lo = torch.maximum(p_x, p_y), torch.minimum(p_x, p_y)
        for i in range(int(hi.max()), -1, -1):
            active = hi >= i
            sub, sx, sy, slo = cond[active], p_x[active], p_y[active], lo[active]
            only = (i > slo) & (i <= torch.maximum(sx, sy))
            for mask, which in ((only & (sx > sy), "x"), (only & (sy > sx), "y"), (i <= slo, "both")):
                if mask.any():
                    sub[mask] = move(which)(sub[mask], i, members[active][mask], step)
            cond[active] = sub
    return cond[:, 2]


def authors_rollout(path, emulator, denoiser, initial, steps, noise, threshold=None):
    """`SNS_NS_refinement` (every member) or `SNS_QG_refinement` (either class > threshold)."""
    members = torch.arange(initial.shape[0])
    state, saved = initial.clone(), []
    with torch.no_grad():
        for step in range(steps):
            proposal = emulator(state)
            logits = denoiser.levels(initial, state, proposal)          # ratio_class_both
            classes = torch.stack([logits.logits_y.argmax(-1), logits.logits_x.argmax(-1)], 1) - 1
            chosen = torch.ones_like(members, dtype=torch.bool) if threshold is None \
                else (classes > threshold).any(dim=1)
            new = proposal.clone()
            if chosen.any():
                new[chosen] = authors_refine(path, denoiser, noise, initial[chosen], state[chosen],
                                             proposal[chosen], classes[chosen], members[chosen], step)
            state = new
            saved.append(state.clone())
    return torch.stack(saved, 1)


def authors_thermalize(emulator, thermalizer, initial, steps, noise, start, stop):
    """`therm_algo` with `denoise_heterogen(forward_diff=True)`: members whose class exceeds
    `start` are re-noised to it and walked down to `stop` (exclusive), x only."""
    members = torch.arange(initial.shape[0])
    state, saved = initial.clone(), []
    with torch.no_grad():
        for step in range(steps):
            state = emulator(state)
            classes = thermalizer.levels(state).argmax(-1) - 1             # noise_class
            select = classes > start
            if select.any():
                x, p, ids = state[select], classes[select], members[select]
                x = forward_diffusion(x, p, noise(ids, step, p + 1, rng.STREAM_RENOISE_X,
                                                  tuple(x.shape[1:])))

                def update(batch, i, sub_ids, t):
                    level = torch.full_like(sub_ids, i + 1)
                    return reverse(batch, thermalizer(batch)[0], i,
                                   noise(sub_ids, t, level, rng.STREAM_X, tuple(batch.shape[1:])))

                masked_loop(x, p, step, ids, update, low=stop)
                state[select] = x
            saved.append(state.clone())
    return torch.stack(saved, 1)


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
    theirs = authors_rollout(path, emulator, denoiser, x0, cfg.steps, CounterNoise(SEED), their_threshold)
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
    theirs = authors_thermalize(emulator, thermalizer, x0, cfg.steps, CounterNoise(SEED),
                                start=cfg.thermalizer_start - 1, stop=cfg.thermalizer_stop - 1)
    ref, engine_states, levels = ours("thermalizer", emulator, thermalizer_denoiser(thermalizer), x0, cfg)
    torch.testing.assert_close(ref.states, theirs, **TOL)
    torch.testing.assert_close(engine_states, theirs, **TOL)
    n_x = levels[..., 0]
    assert (n_x > cfg.thermalizer_start).any() and (n_x <= cfg.thermalizer_start).any()
    assert (n_x >= 50).any()
