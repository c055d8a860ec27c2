"""A rollout of an imported bundle equals the authors' loop run on their own networks.

Their networks (tests/authors/theirs.py, random weights, float32) drive the transcription of
their loop (bench/authors_loop.py, as in tests/engine/test_authors_loop.py): the emulator's
emu(x) + x, their `ratio_class_both` for the classes (no conversion: their network says their
classes), their re-noising and masked loops; the same checkpoints imported into a bundle roll out
through `sns_engine.rollout` (the packed engine). The one allowed difference is the one that
test allows: every member starts its walk at its own level (`published_start=False`).
"""

from __future__ import annotations

import pytest
import torch

from bench.authors_loop import AuthorsLoop
from sns_engine.api import rollout
from sns_engine.authors import import_authors
from sns_engine.engine.denoiser import CounterNoise, DenoiserOutput

from . import theirs as T
from .test_import import GRID, build, emulator_config, refiner_config, save

SEED, STEPS, BATCH = 5, 2, 8
N = 10                                  # levels: short walks keep the test fast
TOL = dict(rtol=1e-4, atol=1e-4)      # on states in units of their member's largest |value| (≥ 1)
SYSTEMS = {"kolmogorov": dict(channels=1, attention="ns", std=[4.44], threshold=None, ramp=0.0,
                              params={"output_grid": GRID, "solver_grid": 32}),
           "qg": dict(channels=2, attention="qg", std=[7.6382e-6, 3.0120e-7], threshold=5, ramp=-0.1,
                      params={"nx": GRID})}


def sharpen(net, ramp):
    """Random heads give logits a few 1e-3 apart, read the same class for every member: without
    biases their features scale with the input, ×100 sets the classes ≫ float32 rounding apart,
    and a ramp −ramp·k on the logits puts QG members on both sides of its threshold."""
    with torch.no_grad():
        for head in (net.regressor_block_1, net.regressor_block_2):
            for layer in (head.conv1, head.conv2, head.linear1):
                layer.bias.zero_()
            head.linear2.weight.mul_(100.0)
            head.linear2.bias.copy_(-ramp * torch.arange(N))
    return net


class TheirRefiner:
    """Their SNS network as the loop calls it: a full forward (ε̂ of short = y, t = x)."""

    def __init__(self, net, channels):
        self.net, self.c = net, channels

    @torch.no_grad()
    def __call__(self, long, y, x):
        eps, logits_short, logits_t = self.net(torch.cat([long, y, x], 1))
        return DenoiserOutput(eps[:, :self.c], eps[:, self.c:], logits_short, logits_t)


class TheirLoop(AuthorsLoop):
    @staticmethod
    def classes(denoiser, initial, state, proposal):
        """`SNS.model.ratio_class_both(cat(ics, x_{t−1}, x̂))`: their (short, t) classes as is."""
        return denoiser.net.ratio_class_both(torch.cat([initial, state, proposal], 1))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """system → (bundle, their refiner, their emulator), each imported once per module."""
    made = {}

    def get(system):
        if system not in made:
            made[system] = _import(system, tmp_path_factory.mktemp(system))
        return made[system]
    return get


def _import(system, root):
    spec = SYSTEMS[system]
    c = spec["channels"]
    config = refiner_config(c, spec["attention"], classes=N)
    refiner = sharpen(build(T.ModernUnetDoubleRegressor_plus, config, seed=11), spec["ramp"])
    emulator = build(T.EmulatorModernUnet, emulator_config(c), seed=12)
    out = import_authors(save(root / "sns.p", T.sns_state_dict(refiner, N), config),
                         emulator=save(root / "emu.p", emulator.state_dict(), emulator_config(c)),
                         system=system, out=root / "bundle", normalisation=spec["std"],
                         system_params=spec["params"], quiet=True)
    return out, refiner.float(), emulator.float()


def initial_states(channels):
    g = torch.Generator().manual_seed(4)
    scale = torch.logspace(-1.5, 1.5, BATCH)[:, None, None, None]
    return torch.randn(BATCH, channels, GRID, GRID, generator=g) * scale


@pytest.mark.parametrize("system,path", [("kolmogorov", "left_down"), ("kolmogorov", "fix_short"),
                                         ("qg", "left_down"), ("qg", "diagonal")])
def test_imported_bundle_rolls_out_as_the_authors_loop(imported, system, path):
    bundle, refiner, emulator = imported(system)
    spec = SYSTEMS[system]
    x0 = initial_states(spec["channels"])
    loop = TheirLoop(N, CounterNoise(SEED), published_start=False)
    theirs = loop.rollout(path, lambda x: emulator(x) + x, TheirRefiner(refiner, spec["channels"]),
                          x0, STEPS, spec["threshold"])
    std = torch.tensor(spec["std"])[:, None, None]
    ours = rollout(bundle, batch=BATCH, steps=STEPS, path=path, initial=x0 * std, seed=SEED,
                   backend="torch", bound=1e6, device="cpu", quiet=True)
    # float32 rounding scales with a member's magnitude, and the initial states span 10^±1.5, so
    # members of |x| ~ 10³ are compared in units of their own largest value (a wrong level, noise
    # or path is off by O(1) of it)
    scale = theirs.flatten(1).abs().amax(1).clamp_min(1.0).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(ours.states / std / scale, theirs / scale, **TOL)
    # their classes (short, t) + 1 are our levels (n_x, n_y); every member walks (Kolmogorov) or
    # those with a class > 5 (QG); the members really sit at different levels
    levels = ours.levels
    assert (levels >= 1).all() and len(set(levels[..., 0].flatten().tolist())) > 1
    if system == "qg":
        assert (levels.amax(-1) >= 7).any() and (levels.amax(-1) < 7).any()
