"""Every path samples the right distribution when the ε-predictor is the exact one.

Toy: frames of D = 2 pixels, (y0, x0) jointly Gaussian N(μ, Σ). At levels (n_y, n_x) the noised
pair z = A·d + S·ε has Cov z = AΣAᵀ + S², and the optimal predictor is
ε̂ = S (AΣAᵀ + S²)⁻¹ (z − Aμ). Starting from exact samples of the noised joint at a path's start
levels, walking it must give the joint at its end levels: the data distribution at (0, 0),
p(x | y) for fix_short (y clean), p(x, y_n) for generate (y kept at n), q(x_stop) for the
Thermalizer. Checked on means and covariances over many members.
"""

import pytest
import torch

from sns_engine.diffusion.paths import Settings, get_path, lattice_points
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import DenoiserOutput, TorchNoise
from sns_engine.engine.reference import walk

N = 40
SCHEDULE = CosineSchedule(N)
D = 2
MU = torch.tensor([0.5, -1.0, 1.5, 0.2], dtype=torch.float64)          # (y0, x0)
L = torch.tensor([[1.0, 0, 0, 0], [0.3, 0.8, 0, 0], [0.6, -0.2, 0.7, 0], [0.1, 0.5, 0.2, 0.6]],
                 dtype=torch.float64)
SIGMA = L @ L.T
MEMBERS = 6000


def noised_moments(n_y: int, n_x: int):
    """Mean and covariance of (y at n_y, x at n_x), and the scale matrices A, S."""
    ab = SCHEDULE.alpha_bar.double()
    a = torch.cat([ab[n_y].sqrt().repeat(D), ab[n_x].sqrt().repeat(D)])
    s = torch.cat([(1 - ab[n_y]).sqrt().repeat(D), (1 - ab[n_x]).sqrt().repeat(D)])
    cov = a[:, None] * SIGMA * a[None] + torch.diag(s**2)
    return a * MU, cov, a, s


class ExactDenoiser:
    """The optimal ε̂ at the levels the walk is at (it follows the plan's lattice points)."""

    def __init__(self, points):
        self.points = iter(points)

    def __call__(self, long, y, x):
        n_x, n_y = next(self.points)
        mean, cov, _, s = noised_moments(n_y, n_x)
        z = torch.cat([y.flatten(1), x.flatten(1)], 1).double()
        eps = (s[:, None] * torch.linalg.solve(cov, (z - mean).T)).T.float()
        logits = torch.zeros(z.shape[0], N + 1)
        return DenoiserOutput(eps[:, :D].reshape(y.shape), eps[:, D:].reshape(x.shape), logits, logits)


def sample_noised(n_y: int, n_x: int, generator):
    mean, cov, _, _ = noised_moments(n_y, n_x)
    z = torch.distributions.MultivariateNormal(mean, cov).sample((MEMBERS,)).float()
    return z[:, :D].reshape(-1, 1, 1, D), z[:, D:].reshape(-1, 1, 1, D)


def check_moments(y, x, mean, cov):
    z = torch.cat([y.flatten(1), x.flatten(1)], 1).double()
    se = (cov.diag() / MEMBERS).sqrt()
    assert ((z.mean(0) - mean).abs() < 5 * se + 1e-3).all(), (z.mean(0), mean)
    torch.testing.assert_close(torch.cov(z.T), cov, rtol=0.12, atol=0.04)


def run(path_name, n_x_hat, n_y_hat, y=None, **plan_kw):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    one = torch.tensor([n_x_hat]), torch.tensor([n_y_hat])
    plan1 = get_path(path_name).plan(*one, Settings(N, **plan_kw))
    plan = get_path(path_name).plan(one[0].repeat(MEMBERS), one[1].repeat(MEMBERS),
                                    Settings(N, **plan_kw))
    start_x, start_y = int(plan1.start_x), int(plan1.start_y)
    ys, xs = sample_noised(start_y, start_x, g)
    if y is not None:  # condition on one fixed clean y
        ys = y.expand_as(ys).clone()
        x0 = torch.distributions.MultivariateNormal(*conditional_x_given_y(y.flatten().double()))
        xs = noise_to(x0.sample((MEMBERS,)).float().reshape(-1, 1, 1, D), start_x, g)
    end = lattice_points(plan1)[-1]
    denoiser = ExactDenoiser(lattice_points(plan1))
    member = torch.arange(MEMBERS)
    y_out, x_out = walk(denoiser, SCHEDULE, ys, ys, xs, plan, TorchNoise(g), member,
                        torch.zeros(MEMBERS, dtype=torch.long))
    return y_out, x_out, end


def noise_to(x0, n, g):
    ab = SCHEDULE.alpha_bar[n]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)


def conditional_x_given_y(y):
    syy, sxy, sxx = SIGMA[:D, :D], SIGMA[D:, :D], SIGMA[D:, D:]
    gain = sxy @ torch.linalg.inv(syy)
    return MU[D:] + gain @ (y - MU[:D]), sxx - gain @ sxy.T


@pytest.mark.parametrize("path,n_x,n_y", [("left_down", N, N), ("down_left", N, N),
                                          ("diagonal", N, N), ("diagonal", 30, 12),
                                          ("left_down", 25, 35), ("acdm", 3, 7)])
def test_paths_to_origin_sample_the_joint(path, n_x, n_y):
    y, x, end = run(path, n_x, n_y)
    assert end == (0, 0)
    mean, cov, _, _ = noised_moments(0, 0)
    check_moments(y, x, mean, cov)


def test_fix_short_samples_x_given_y_held_at_its_level():
    y, x, end = run("fix_short", N, 8)
    assert end == (0, 8)
    mean, cov, _, _ = noised_moments(8, 0)
    check_moments(y, x, mean, cov)


def test_gencast_from_n_samples_the_conditional():
    y_fixed = torch.tensor([0.9, -1.7]).reshape(1, 1, 1, D)
    _, x, end = run("gencast", N, 0, y=y_fixed)
    assert end == (0, 0)
    mean, cov = conditional_x_given_y(y_fixed.flatten().double())
    xs = x.flatten(1).double()
    se = (cov.diag() / MEMBERS).sqrt()
    assert ((xs.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(xs.T), cov, rtol=0.12, atol=0.03)


def test_generate_samples_x_given_noisy_y():
    y, x, end = run("generate", 5, 8)
    assert end == (0, 8)
    mean, cov, _, _ = noised_moments(8, 0)
    check_moments(y, x, mean, cov)


def test_thermalizer_walks_x_from_start_to_stop():
    # plan: from its estimate 20 down to stop 4, for a member estimated above start
    _, x, end = run("thermalizer", 20, 0, thermalizer_start=10, thermalizer_stop=4)
    assert end == (4, 0)
    mean, cov, _, _ = noised_moments(0, 4)
    xs = x.flatten(1).double()
    se = (cov[D:, D:].diag() / MEMBERS).sqrt()
    assert ((xs.mean(0) - mean[D:]).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(xs.T), cov[D:, D:], rtol=0.12, atol=0.03)
