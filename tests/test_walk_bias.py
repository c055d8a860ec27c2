"""The walk-bias diagnostic: its numbers against an analytic walk, its report, and where it goes.

Analytic check: Gaussian data x0 ~ N(c·x_c, τ²I) (c = 1: around the clean frame x_c; c = 0: a
zero-mean prior) and a denoiser whose ε̂ is the exact one for that Gaussian times a factor f
(f = 1: exact; f = 0.99: it under-predicts ε̂ by 1 %). The diagnostic noises x_c itself to k and
walks back. Every step is linear in x with white noise, so the walked frame is μ_0·x_c + e, e
white with per-pixel variance v_0, both given by a recursion over the DDPM (or DDIM) coefficients,
and E[KE(walked)]/KE(x_c) = μ_0² + v_0·S/KE(x_c), S = Σ_{k≠0} 1/(2|k|²HW) the kinetic energy of
unit white noise on the grid.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import sns_engine
from sns_engine.data.store import StoreSpec
from sns_engine.diffusion.paths import Settings, X, Y, get_path, lattice_points
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import Denoiser, DenoiserOutput
from sns_engine.walk_bias import (
    Antithetic,
    Measure,
    plot,
    summarise,
    table,
    walk_bias,
    walk_frames,
    walk_keyword,
)

ROOT = Path(__file__).resolve().parents[1]
GRID = 16
N = 1000
SCHEDULE = CosineSchedule(N)
SPEC = StoreSpec(system="kolmogorov", preset="cpu", params={"solver_grid": 32}, channels=1,
                 channel_names=("vorticity",), grid=GRID, snapshot_dt=0.005,
                 domain_length=2 * math.pi, trajectories=1, snapshots=1, seed=0,
                 trajectory_batch=1, time_chunk=1)
FLOOR = {b: 1.0 for b in ("all", "low", "mid", "high")}


class GaussianDenoiser:
    """ε̂_x = f·√(1−ᾱ_n)(x − √ᾱ_n·c·x_c)/(ᾱ_n τ² + 1 − ᾱ_n), x_c passed as the long frame; the
    level n of each forward follows the plan's lattice (the denoiser is not told it)."""

    def __init__(self, points, tau2: float, factor: float, centre: float):
        self.points, self.tau2, self.factor, self.centre = iter(points), tau2, factor, centre

    def __call__(self, long, y, x):
        n_x, _ = next(self.points)
        ab = SCHEDULE.alpha_bar.double()[n_x]
        gain = self.factor * (1 - ab).sqrt() / (ab * self.tau2 + 1 - ab)
        eps = (gain * (x.double() - ab.sqrt() * self.centre * long.double())).float()
        logits = torch.zeros(x.shape[0], N + 1)
        return DenoiserOutput(torch.zeros_like(y), eps, logits, logits)


def walked_moments(k: int, tau2: float, factor: float, centre: float,
                   kind: str = "ddpm") -> tuple[float, float]:
    """(μ_0, v_0) of x_c noised to k and walked back to 0 by the Gaussian denoiser (float64)."""
    ab = SCHEDULE.alpha_bar.double()
    mu, v = ab[k].sqrt(), 1 - ab[k]
    for n in range(k, 0, -1):
        gain = factor * (1 - ab[n]).sqrt() / (ab[n] * tau2 + 1 - ab[n])
        if kind == "ddpm":
            alpha = ab[n] / ab[n - 1]
            c_x, c_eps = 1 / alpha.sqrt(), (1 - alpha) / ((1 - ab[n]).sqrt() * alpha.sqrt())
            sigma2 = (1 - alpha) * (1 - ab[n - 1]) / (1 - ab[n])
        else:  # DDIM, η = 0
            c_x = (ab[n - 1] / ab[n]).sqrt()
            c_eps, sigma2 = c_x * (1 - ab[n]).sqrt() - (1 - ab[n - 1]).sqrt(), 0.0
        mu = (c_x - c_eps * gain) * mu + c_eps * gain * ab[n].sqrt() * centre
        v = (c_x - c_eps * gain) ** 2 * v + sigma2
    return float(mu), float(v)


def white_noise_energy() -> float:
    """S: expected kinetic energy of unit-variance white noise on the GRID² grid, domain 2π."""
    m = torch.fft.fftfreq(GRID, 1 / GRID).double()
    k2 = m[:, None] ** 2 + m[None, :] ** 2
    return float((1 / (2 * k2[k2 > 0] * GRID * GRID)).sum())


def smooth_frames(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Fresh random vorticity-like fields (batch, 1, GRID, GRID): white noise, low-passed."""
    f = torch.fft.rfft2(torch.randn(batch, 1, GRID, GRID, generator=gen))
    m = torch.fft.fftfreq(GRID, 1 / GRID)
    k2 = m[:, None] ** 2 + torch.fft.rfftfreq(GRID, 1 / GRID)[None, :] ** 2
    return torch.fft.irfft2(f * torch.exp(-k2 / 8), s=(GRID, GRID))


def run(k: int, tau2: float, factor: float, centre: float, frames: int = 128, kind: str = "ddpm"):
    """The diagnostic's entry for the Gaussian denoiser, and the expected KE ratio − 1 of the
    denoiser with factor f, for f = `factor` and f = 1 (the exact one), on the same frames."""
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))  # fresh every run
    measure = Measure(SPEC)
    clean = smooth_frames(frames, gen)
    clean = clean / measure(clean)[0].sqrt().float()[:, None, None, None]   # KE 1 each: the
    twice = torch.cat([clean, clean])                                        # bias is one number
    plan = get_path("left_down").plan(torch.tensor([k]), torch.tensor([0]), Settings(N))
    denoiser = Denoiser.from_forward(GaussianDenoiser(lattice_points(plan)[:-1], tau2, factor, centre))
    walked = walk_frames(denoiser, SCHEDULE, (twice, twice, twice), "x", "left_down", k,
                         Antithetic(gen), kind)
    entry = summarise(measure, twice, walked, True, FLOOR, 1000, 0)
    energy = measure(clean)[0]

    def expected(f: float) -> float:
        mu, v = walked_moments(k, tau2, f, centre, kind)
        return float((mu ** 2 + v * white_noise_energy() / energy).mean() - 1)

    return entry, expected(factor), expected(1.0)


def agrees(entry: dict, value: float) -> bool:
    """The diagnostic's mean is within twice its 90 % half-width of `value` (≈ 3.3 σ): a 90 %
    interval alone misses the truth one run in ten, and the inputs are fresh every run."""
    lo, hi = entry["interval"]
    return abs(entry["ke_ratio_minus_1"] - value) <= hi - lo


@pytest.mark.parametrize("k,tau2,centre", [(10, 0.01, 1.0), (40, 1.0, 0.0), (40, 0.05, 1.0)])
def test_exact_gaussian_denoiser_bias_is_the_analytic_one(k, tau2, centre):
    entry, expected, _ = run(k, tau2, 1.0, centre)
    assert abs(expected) > 1e-5                      # a real bias, not a trivial 0
    assert agrees(entry, expected), (expected, entry["ke_ratio_minus_1"], entry["interval"])


def test_under_predicted_eps_gives_a_positive_bias_the_diagnostic_detects():
    """ε̂ 1 % too small: the walk removes too little and the frame keeps ≈ 0.01 % more energy
    than the exact walk leaves (k = 40); the interval holds the defective walk's value and lies
    wholly above the exact one's."""
    entry, defective, exact = run(40, 1.0, 0.99, 0.0)
    lo, hi = entry["interval"]
    assert defective - exact > 5e-5
    assert agrees(entry, defective) and exact < lo, (exact, defective, entry["interval"])
    assert hi - lo < (defective - exact) / 2


def test_a_point_mass_walk_returns_the_frame():
    entry, expected, _ = run(10, 0.0, 1.0, 1.0, frames=16)
    assert expected < 1e-9 and abs(entry["ke_ratio_minus_1"]) < 1e-5


@pytest.mark.skipif(walk_keyword() is None, reason="this engine has no DDIM walk")
def test_ddim_walk_bias_is_the_analytic_one():
    entry, expected, _ = run(10, 0.0, 1.0, 1.0, frames=16, kind="ddim")
    assert expected < 1e-9 and abs(entry["ke_ratio_minus_1"]) < 1e-5
    entry, expected, _ = run(40, 1.0, 1.0, 0.0, kind="ddim")
    assert agrees(entry, expected), (expected, entry["interval"])


def test_walk_bias_report_on_a_tiny_bundle(tiny_bundle, tiny_kolmogorov, tmp_path):
    r = walk_bias(tiny_bundle, tiny_kolmogorov, levels=(1, 3), frames=(3, 2), walks=("ddpm",),
                  cases=("x", "y"), quiet=True)
    assert r["frames"] == [3, 2] and r["walks"] == ["ddpm"]
    rows = {(row["input"], row["case"], row["path"]): row for row in r["rows"]}
    assert len(rows) == 2 * 2 * 2
    for source in ("clean", "emulator"):
        assert rows[source, "x", "fix_short"]["same_walk_as"] == "left_down"   # y clean: one walk
        assert "fix_short" in rows[source, "y", "fix_short"]["not_walked"]     # it holds y
        for e in rows[source, "x", "left_down"]["per_level"] + rows[source, "y", "left_down"]["per_level"]:
            lo, hi = e["interval"]
            assert lo <= e["ke_ratio_minus_1"] <= hi and e["walks"] == 2 * e["frames"]
            assert set(e["band_error"]) == {"all", "low", "mid", "high"}
            assert e["compounded"]["700"][0] == pytest.approx((1 + e["ke_ratio_minus_1"]) ** 700)
    assert set(r["floor"]) == {"all", "low", "mid", "high"}
    assert "command" in r["data"] and "/" not in r["data"]["command"]
    json.dumps(r, allow_nan=False)
    text = table(r)
    assert "left_down = fix_short" in text and text.count("\n") == 1 + 2 * (2 * 2 + 1)
    assert plot(r, tmp_path / "walk.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="paths must be"):
        walk_bias(tiny_bundle, tiny_kolmogorov, paths=("acdm",), quiet=True)


def test_training_records_the_walk_bias_at_each_validation(tiny_bundle):
    history = json.loads((tiny_bundle / "train" / "refiner.json").read_text())["history"]
    assert history and all(math.isfinite(h["walk_bias_ke"]) and h["walk_bias_level"] == 10
                           for h in history)
    for h in history:  # the x head's reading of the probe's frames at levels 0, 2 and 10
        assert set(h["head_x"]) == {"0", "2", "10"}
        assert all(0 <= r["p10"] <= r["median"] <= r["p90"] <= 20 for r in h["head_x"].values())
    emulator = json.loads((tiny_bundle / "train" / "emulator.json").read_text())["history"]
    assert all("walk_bias_ke" not in h for h in emulator)


def test_calibrate_never_writes_the_embedded_bundle(tmp_path):
    before = (ROOT / "sns_engine" / "default_bundle" / "config.json").read_bytes()
    with pytest.raises(ValueError, match="out=DIR"):
        sns_engine.calibrate(None, tmp_path / "never-read.zarr")
    with pytest.raises(ValueError, match="not an empty directory"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        sns_engine.calibrate(None, tmp_path / "never-read.zarr", out=tmp_path / "full")
    assert (ROOT / "sns_engine" / "default_bundle" / "config.json").read_bytes() == before


def test_calibrate_into_a_copy_leaves_the_bundle_alone(tiny_bundle, tiny_kolmogorov, tmp_path):
    before = (tiny_bundle / "config.json").read_bytes()
    copy = tmp_path / "calibrated"
    result = sns_engine.calibrate(tiny_bundle, tiny_kolmogorov, samples=2, free_steps=(1,),
                                  walk_bias_frames=2, out=copy, quiet=True)
    assert (tiny_bundle / "config.json").read_bytes() == before
    stored = json.loads((copy / "config.json").read_text())["calibration"]
    assert stored["walk_bias"]["rows"] == json.loads(json.dumps(result["walk_bias"]["rows"]))
    assert sns_engine.load_bundle(copy).models.keys() == sns_engine.load_bundle(tiny_bundle).models.keys()


def strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_the_embedded_bundle_records_no_local_path():
    config = json.loads((ROOT / "sns_engine" / "default_bundle" / "config.json").read_text())
    local = {str(p) for p in (Path.home(), ROOT, ROOT.parent, Path.cwd()) if str(p) != "/"}
    bad = [s for s in strings(config) if os.path.isabs(s) or s.startswith("~")
           or any(place in s for place in local)]
    assert not bad, f"the embedded bundle's config.json names local paths: {bad}"
    assert config["calibration"]["data"]["command"].startswith("sns-engine data kolmogorov")


def test_plan_moves_match_the_cases():
    # the diagnostic's cases start where the docstring says: x case walks x only, y case y only
    plan = get_path("left_down").plan(torch.tensor([4]), torch.tensor([0]), Settings(N))
    assert plan.moves[0].tolist() == [Y, X] and plan.counts[0].tolist() == [0, 4]
