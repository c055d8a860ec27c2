"""Spectra: Parseval identities, analytic single modes, batching, and pyqg's own QG spectra."""

import math
import warnings

import numpy as np
import pytest
import torch

from sns_engine.diagnostics import (
    DiagnosticsError,
    energy_spectrum,
    enstrophy_spectrum,
    isotropic_spectrum,
    qg_layer_energy_spectra,
)
from sns_engine.diagnostics.spectra import log_spectrum_error, spectral_bands

RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}
SHAPES = [(16, 16), (3, 32, 32), (2, 3, 15, 15), (4, 17, 20)]
DTYPES = [torch.float32, torch.float64]
# the QG jet (pyqg QGModel of the reference setup)
QG_PARAMS = {"nx": 64, "dt": 3600.0, "rek": 7e-8, "delta": 0.1, "beta": 1e-11}


def random_field(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + 0.3).to(dtype)


def without_nyquist(field):
    """The field minus its Nyquist-wavenumber modes (even sizes), whose derivative a grid cannot
    hold: a spectral velocity drops them while the energy spectrum counts them."""
    f_hat = torch.fft.fft2(field.double())
    for dim in (-2, -1):
        n = field.shape[dim]
        if n % 2 == 0:
            f_hat.select(dim, n // 2).zero_()
    return torch.fft.ifft2(f_hat).real.to(field.dtype)


def spectral_velocity(vorticity, length):
    """u = −∂ψ/∂y, v = ∂ψ/∂x with ∇²ψ = ω, by full complex FFTs in float64 (independent of the
    half-plane code under test)."""
    h, w = vorticity.shape[-2:]
    ky = torch.fft.fftfreq(h, d=length / h, dtype=torch.float64)[:, None] * 2 * math.pi
    kx = torch.fft.fftfreq(w, d=length / w, dtype=torch.float64)[None, :] * 2 * math.pi
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    psi_hat = -torch.fft.fft2(vorticity.double()) / k2
    psi_hat[..., 0, 0] = 0
    u = torch.fft.ifft2(-1j * ky * psi_hat).real
    v = torch.fft.ifft2(1j * kx * psi_hat).real
    return u, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("length", [2 * math.pi, 7.5])
def test_isotropic_spectrum_parseval(shape, dtype, length):
    field = random_field(shape, dtype)
    k, s = isotropic_spectrum(field, length)
    dk = 2 * math.pi / length
    assert s.dtype == k.dtype == dtype and s.shape == (*shape[:-2], k.numel())
    expected_k = dk * torch.arange(k.numel(), dtype=torch.float64)
    torch.testing.assert_close(k.double(), expected_k, rtol=RTOL[dtype], atol=0)
    # the last shell holds the grid's corner (every mode counted)
    h, w = shape[-2:]
    assert k.numel() == round(math.hypot(h // 2, w // 2)) + 1
    assert (s >= 0).all()
    half_mean_square = 0.5 * field.double().square().mean(dim=(-2, -1))
    torch.testing.assert_close(s.double().sum(-1) * dk, half_mean_square, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_energy_spectrum_parseval_against_velocity(shape, dtype):
    length = 3.0
    vorticity = without_nyquist(random_field(shape, dtype, seed=1))
    k, e = energy_spectrum(vorticity, length)
    assert e.dtype == dtype and e[..., 0].abs().max() == 0  # no mean mode
    u, v = spectral_velocity(vorticity, length)
    half_mean_square = 0.5 * (u.square() + v.square()).mean(dim=(-2, -1))
    torch.testing.assert_close(e.double().sum(-1) * k[1].double(), half_mean_square,
                               rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_enstrophy_spectrum_parseval(shape, dtype):
    vorticity = random_field(shape, dtype, seed=2)
    k, z = enstrophy_spectrum(vorticity, 5.0)
    half_mean_square = 0.5 * vorticity.double().square().mean(dim=(-2, -1))
    torch.testing.assert_close(z.double().sum(-1) * k[1].double(), half_mean_square,
                               rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "shell"), [((3, 4), 5), ((0, 7), 7), ((2, 2), 3), ((5, -1), 5),
                                             ((-6, 0), 6)])
def test_single_fourier_mode(mode, shell, dtype):
    """ω = A cos(k·x + φ): its enstrophy A²/4 and energy A²/(4|k|²) sit in shell round(|k|/dk)."""
    n, length, amplitude = 16, 3.0, 1.7
    dk = 2 * math.pi / length
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64) * length / n,
                          torch.arange(n, dtype=torch.float64) * length / n, indexing="ij")
    kx, ky = dk * mode[0], dk * mode[1]
    vorticity = (amplitude * torch.cos(kx * x + ky * y + 0.4)).to(dtype)
    atol = 1e-6 if dtype == torch.float32 else 1e-13
    k, z = enstrophy_spectrum(vorticity, length)
    _, e = energy_spectrum(vorticity, length)
    expected_z = torch.zeros(k.numel(), dtype=torch.float64)
    expected_z[shell] = amplitude**2 / 4 / dk
    torch.testing.assert_close(z.double(), expected_z, rtol=0, atol=atol * amplitude**2)
    expected_e = expected_z / (kx**2 + ky**2)
    torch.testing.assert_close(e.double(), expected_e, rtol=0, atol=atol * expected_e.max())


@pytest.mark.parametrize("shells", ["round", "pyqg"])
def test_batched_equals_per_sample(shells):
    fields = random_field((2, 3, 2, 16, 16), torch.float64, seed=3)
    inversion = {"length": 4.0, "f1": 2.0, "f2": 0.5}
    cases = [
        (lambda f: isotropic_spectrum(f, 4.0, shells=shells), fields),
        (lambda f: energy_spectrum(f, 4.0, shells=shells), fields),
        (lambda f: qg_layer_energy_spectra(f, **inversion, shells=shells), fields),
    ]
    for spectrum, batch in cases:
        k, whole = spectrum(batch)
        for i in range(batch.shape[0]):
            for j in range(batch.shape[1]):
                k_one, one = spectrum(batch[i, j])
                torch.testing.assert_close(k_one, k, rtol=0, atol=0)
                torch.testing.assert_close(whole[i, j], one, rtol=1e-13, atol=0)


def test_qg_decoupled_layers_are_2d_energy_spectra():
    """With F₁ = F₂ = 0 the inversion is ∇²ψ = q in each layer."""
    q = random_field((3, 2, 24, 24), torch.float64, seed=4)
    k, e = qg_layer_energy_spectra(q, length=2.5, f1=0.0, f2=0.0)
    k_2d, e_2d = energy_spectrum(q, 2.5)
    torch.testing.assert_close(k, k_2d)
    torch.testing.assert_close(e, e_2d, rtol=1e-13, atol=0)


@pytest.fixture(scope="module")
def qg_model():
    """A pyqg jet model stepped 300 times from a random PV (its streamfunction brought up to date
    with its final PV: pyqg inverts at the start of each step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No pyfftw detected"
        import pyqg

        model = pyqg.QGModel(**QG_PARAMS, log_level=0)
    layer_scale = np.array([1e-6, 1e-7]).reshape(2, 1, 1)
    model.q = np.random.default_rng(5).standard_normal((2, 64, 64)) * layer_scale
    for _ in range(300):
        model._step_forward()
    model._invert()
    return model


@pytest.mark.parametrize("dtype", DTYPES)
def test_qg_spectra_match_pyqg_calc_ispec(qg_model, dtype):
    from pyqg.diagnostic_tools import calc_ispec

    m = qg_model
    q = torch.from_numpy(m.q).to(dtype)
    k, e = qg_layer_energy_spectra(q, length=m.L, f1=m.F1, f2=m.F2, shells="pyqg")
    assert e.shape == (2, k.numel()) and e.dtype == dtype
    for layer in range(2):
        kr, expected = calc_ispec(m, 0.5 * m.wv2 * np.abs(m.ph[layer]) ** 2 / m.M**2)
        np.testing.assert_allclose(k.double().numpy(), kr, rtol=1e-6 if dtype == torch.float32
                                   else 1e-15)
        # the spectrum falls 30 decades over the bins: the last ones are FFT round-off, whose
        # energy is ~ (float eps)² of the peak
        floor = (1e-11 if dtype == torch.float32 else 1e-20) * expected.max()
        np.testing.assert_allclose(e[layer].double().numpy(), expected,
                                   rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=floor)


def test_qg_spectra_parseval_against_pyqg_velocity(qg_model):
    m = qg_model
    k, e = qg_layer_energy_spectra(torch.from_numpy(m.q), length=m.L, f1=m.F1, f2=m.F2)
    kinetic = 0.5 * (m.u**2 + m.v**2).mean(axis=(1, 2))
    np.testing.assert_allclose((e.sum(-1) * k[1]).numpy(), kinetic, rtol=1e-12)


def test_log_spectrum_error_of_a_vanishing_or_failed_spectrum_is_inf():
    """A zero field is infinitely wrong (the relative error would give it 1); so is nan, and one
    empty or negative shell; the other batch entries are unaffected."""
    reference = random_field((6,), torch.float64, seed=10).abs() + 0.1
    spectra = reference.repeat(5, 1) * 1.5
    spectra[0] = 0.0
    spectra[1, 3] = 0.0
    spectra[2, 2] = math.nan
    spectra[3, 5] = -1e-3
    errors = log_spectrum_error(spectra, reference)
    assert errors[:4].tolist() == [math.inf] * 4
    assert errors[4].item() == pytest.approx(math.log(1.5), rel=1e-14)


@pytest.mark.parametrize(("shells", "sizes"), [(3, [1, 1, 1]), (9, [3, 3, 3]), (10, [4, 3, 3]),
                                               (11, [4, 4, 3]), (31, [11, 10, 10])])
def test_spectral_bands_partition_the_shells(shells, sizes):
    bands = spectral_bands(shells)
    assert list(bands) == ["low", "mid", "high"]
    covered = [i for band in bands.values() for i in range(shells)[band]]
    assert covered == list(range(shells))  # contiguous, in order, each shell once
    assert [len(range(shells)[band]) for band in bands.values()] == sizes

@pytest.mark.parametrize(("call", "message"), [
    (lambda: isotropic_spectrum(torch.ones(8, 8, dtype=torch.int64)), "float32 or float64"),
    (lambda: isotropic_spectrum(torch.rand(8, 8), shells="square"), "shells"),
    (lambda: isotropic_spectrum(torch.rand(8, 8), length=-1.0), "length"),
    (lambda: isotropic_spectrum(torch.rand(8)), "(..., H, W)"),
    (lambda: energy_spectrum(torch.rand(9, 9), shells="pyqg"), "even square"),
    (lambda: qg_layer_energy_spectra(torch.rand(3, 8, 8), length=1.0, f1=1.0, f2=1.0), "two"),
    (lambda: qg_layer_energy_spectra(torch.rand(2, 8, 8), length=1.0, f1=-1.0, f2=1.0), "f1"),
    (lambda: log_spectrum_error(torch.rand(5), torch.rand(4)), "last (shell) axis"),
    (lambda: log_spectrum_error(torch.rand(4), torch.tensor([1.0, 0.0, 1.0, 1.0])), "positive and finite"),
    (lambda: spectral_bands(2), "at least 3 shells"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(DiagnosticsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shells", ["round", "pyqg"])
def test_cuda_matches_cpu(dtype, shells):
    q = random_field((4, 2, 64, 64), dtype, seed=7)
    k, e = qg_layer_energy_spectra(q, length=1e6, f1=4e-9, f2=4e-10, shells=shells)
    k_gpu, e_gpu = qg_layer_energy_spectra(q.cuda(), length=1e6, f1=4e-9, f2=4e-10, shells=shells)
    assert e_gpu.device.type == "cuda" and e_gpu.dtype == dtype
    torch.testing.assert_close(k_gpu.cpu(), k, rtol=RTOL[dtype], atol=0)
    torch.testing.assert_close(e_gpu.cpu(), e, rtol=RTOL[dtype], atol=0)
    _, s = isotropic_spectrum(q, 2.0, shells=shells)
    _, s_gpu = isotropic_spectrum(q.cuda(), 2.0, shells=shells)
    torch.testing.assert_close(s_gpu.cpu(), s, rtol=RTOL[dtype], atol=0)
