"""Isotropic spectra of periodic fields on a square domain, batched in torch.

Normalisation, the one convention of this module. A field f sampled on an H × W grid (y, x) over a
periodic square of side `length` has wavevectors k = dk·(m, n), dk = 2π/length, m, n integers in
FFT order, and Fourier coefficients f̂(k) = Σ_x f(x) e^{−ik·x} (torch.fft, unnormalised). A density
e(k) ≥ 0 per Fourier mode becomes an isotropic spectrum by summing it over the shells
s = round(|k|/dk), s = 0 … K − 1 (K − 1 the largest shell of the grid, its corners included), per
unit wavenumber:

    S(k_s) = Σ_{round(|k|/dk) = s} e(k) / dk,      k_s = s·dk,      so  Σ_s S(k_s)·dk = Σ_k e(k).

With e = ½|f̂|²/(HW)², Parseval gives Σ_s S(k_s)·dk = ½⟨f²⟩, ⟨·⟩ the spatial mean: S has the units
of f² × length. Every spectrum here is of that form with its own e: energy ½|k|²|ψ̂|²/(HW)²,
enstrophy ½|ω̂|²/(HW)².

`shells="pyqg"` replaces the shell sum by pyqg's `diagnostic_tools.calc_ispec` at its defaults
(averaging=True, truncate=True), for comparison with pyqg's published spectra: bins of width
√2·dk from 0 up to the inscribed circle |k| < dk·H/2 (the last bin closed), each the mean of e over
the bin's modes (the rfft half plane with its k_x = 0 and last columns halved) times 2π k_c/dk², k_c
the bin centre, which is the returned wavenumber. That estimator satisfies Parseval only roughly.

The FFT runs in the input's precision (float32 or float64), the shell sums in float64; results
come back in the input's dtype, on its device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Shells = Literal["round", "pyqg"]
SHELLS = ("round", "pyqg")
BANDS = ("low", "mid", "high")  # the wavenumber bands of `spectral_bands`


class DiagnosticsError(ValueError):
    """An input a diagnostic cannot use (wrong shape, dtype or parameter)."""


def require_float(name: str, x: torch.Tensor) -> None:
    """Raise DiagnosticsError unless `x` is a float32 or float64 tensor."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64):
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise DiagnosticsError(f"{name} must be a float32 or float64 tensor, got {kind}; "
                               "convert it with torch.as_tensor(...).float() or .double()")


def isotropic_spectrum(field: torch.Tensor, length: float = 2 * math.pi, *,
                       shells: Shells = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """Shell wavenumbers k (K,) and spectrum S (..., K) of ½f² for fields (..., H, W): with the
    module's normalisation Σ S dk = ½⟨f²⟩, the mean mode included (in shell 0)."""
    f_hat = _fourier("field", field, length, shells)
    return _isotropic(0.5 * f_hat.abs().square(), field, length, shells)


def enstrophy_spectrum(vorticity: torch.Tensor, length: float = 2 * math.pi, *,
                       shells: Shells = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """Enstrophy spectrum Z (..., K) of vorticity fields (..., H, W): Σ Z dk = ½⟨ω²⟩."""
    return isotropic_spectrum(vorticity, length, shells=shells)


def energy_spectrum(vorticity: torch.Tensor, length: float = 2 * math.pi, *,
                    shells: Shells = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """Kinetic energy spectrum E (..., K) of vorticity fields (..., H, W), (y, x) order.

    The streamfunction solves ∇²ψ = ω without its mean mode (ψ̂ = −ω̂/|k|², ψ̂(0) = 0), the velocity
    is u = −∂ψ/∂y, v = ∂ψ/∂x, and Σ E dk = ½⟨u² + v²⟩: e = ½|k|²|ψ̂|²/(HW)² = ½|ω̂|²/(|k|²(HW)²).
    Modes at a Nyquist wavenumber (even H or W), whose derivative the grid cannot hold, count with
    the same e, as in pyqg.
    """
    w_hat = _fourier("vorticity", vorticity, length, shells)
    k2 = _wavenumber_squared(*vorticity.shape[-2:], length, vorticity.device)
    return _isotropic(0.5 * w_hat.abs().square() * _inverse(k2), vorticity, length, shells)


def qg_layer_energy_spectra(q: torch.Tensor, *, length: float, f1: float, f2: float,
                            shells: Shells = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """Kinetic energy spectrum E (..., 2, K) of each layer of two-layer QG PV anomalies
    q (..., 2, H, W) (upper, lower; pyqg's `QGModel.q`, without the background PV gradient).

    The streamfunction inverts pyqg's two-layer relation per Fourier mode,
    q̂₁ = −|k|²ψ̂₁ + F₁(ψ̂₂ − ψ̂₁), q̂₂ = −|k|²ψ̂₂ + F₂(ψ̂₁ − ψ̂₂), with ψ̂ = 0 at k = 0; f1, f2 are
    F₁ = 1/(rd²(1 + δ)), F₂ = δF₁ [1/length²] and `length` the domain side. Per layer
    e = ½|k|²|ψ̂|²/(HW)², so Σ E dk = ½⟨u² + v²⟩ of that layer; `shells="pyqg"` gives pyqg's
    `calc_ispec` of ½·KEspec (its KEspec is |k|²|ψ̂|²/M²).
    """
    if q.ndim < 3 or q.shape[-3] != 2:
        raise DiagnosticsError(f"q must have shape (..., 2, H, W) (two layers), got "
                               f"{tuple(q.shape)}; stack the upper and lower layer PV on dim -3")
    for name, value in (("f1", f1), ("f2", f2)):
        if not (math.isfinite(value) and value >= 0):
            raise DiagnosticsError(f"{name} must be a finite F ≥ 0 [1/length²], got {value}; "
                                   "use F1 = 1/(rd²(1 + δ)) and F2 = δ·F1")
    q_hat = _fourier("q", q, length, shells).to(torch.complex128)
    k2 = _wavenumber_squared(*q.shape[-2:], length, q.device)
    inverse_det = _inverse(k2 * (k2 + f1 + f2))
    q1, q2 = q_hat[..., 0, :, :], q_hat[..., 1, :, :]
    psi = torch.stack((-((k2 + f2) * q1 + f1 * q2) * inverse_det,
                       -(f2 * q1 + (k2 + f1) * q2) * inverse_det), dim=-3)
    return _isotropic(0.5 * k2 * psi.abs().square(), q, length, shells)


def log_spectrum_error(spectrum: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Symmetric spectrum error: mean over shells of |log(S(k)/S_ref(k))|, reducing the last
    (shell) axis; leading dims broadcast (S (B, T, K) against one S_ref (K,) gives (B, T)).

    An excess and a deficit by the same factor score the same (S = S_ref·e^{±c} gives c), and a
    deficit is not capped: a spectrum with a shell S ≤ 0 or a non-finite one scores inf (a zero
    field is infinitely wrong, not 1). The reference must be positive and finite on every shell:
    slice both spectra to the shells to compare (e.g. those the solver resolves) first."""
    require_float("spectrum", spectrum)
    require_float("reference", reference)
    if spectrum.ndim == 0 or reference.ndim == 0 or spectrum.shape[-1] != reference.shape[-1]:
        raise DiagnosticsError(f"spectrum {tuple(spectrum.shape)} and reference "
                               f"{tuple(reference.shape)} must share their last (shell) axis; "
                               "compute both on the same grid and length")
    if not (torch.isfinite(reference) & (reference > 0)).all():
        raise DiagnosticsError("the reference spectrum must be positive and finite on every shell; "
                               "leave out the shells where it is not (e.g. k = 0)")
    ok = torch.isfinite(spectrum) & (spectrum > 0)
    error = (torch.where(ok, spectrum, 1.0).log() - reference.log()).abs().mean(-1)
    return torch.where(ok.all(-1), error, math.inf)


def spectral_bands(shells: int) -> dict[str, slice]:
    """Split `shells` consecutive shells into three contiguous bands "low", "mid", "high" of equal
    count, the lower bands taking one shell more when `shells` is not a multiple of 3 (e.g. 10
    shells: 4, 3, 3). Returns a slice of the shell axis per band."""
    if shells < len(BANDS):
        raise DiagnosticsError(f"need at least {len(BANDS)} shells for the bands {BANDS}, got "
                               f"{shells}")
    sizes = [shells // len(BANDS) + (i < shells % len(BANDS)) for i in range(len(BANDS))]
    ends = [sum(sizes[:i + 1]) for i in range(len(BANDS))]
    return {name: slice(end - size, end) for name, size, end in zip(BANDS, sizes, ends, strict=True)}


def _fourier(name: str, field: torch.Tensor, length: float, shells: str) -> torch.Tensor:
    """f̂/(HW) on the rfft half plane (..., H, W//2 + 1), after checking the arguments."""
    require_float(name, field)
    if field.ndim < 2 or min(field.shape[-2:]) < 2:
        raise DiagnosticsError(f"{name} must have shape (..., H, W) with H, W ≥ 2, got "
                               f"{tuple(field.shape)}")
    if not (math.isfinite(length) and length > 0):
        raise DiagnosticsError(f"length (the domain side) must be positive, got {length}")
    if shells not in SHELLS:
        raise DiagnosticsError(f"shells must be one of {SHELLS}, got {shells!r}")
    h, w = field.shape[-2:]
    if shells == "pyqg" and (h != w or h % 2):
        raise DiagnosticsError(f"shells='pyqg' needs an even square grid as pyqg's, got {h}×{w}; "
                               "use shells='round'")
    return torch.fft.rfft2(field) / (h * w)


def _mode_numbers(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers m (H, 1) and n (1, W//2 + 1) of the rfft half plane (FFT order), as
    float64."""
    m = torch.arange(h, device=device)
    m = torch.where(m < (h + 1) // 2, m, m - h).to(torch.float64)
    return m[:, None], torch.arange(w // 2 + 1, device=device, dtype=torch.float64)[None, :]


def _wavenumber_squared(h: int, w: int, length: float, device: torch.device) -> torch.Tensor:
    """|k|² on the rfft half plane (H, W//2 + 1), float64, in pyqg's arithmetic (k = dk·m)."""
    dk = 2.0 * math.pi / length
    m, n = _mode_numbers(h, w, device)
    ky, kx = dk * m, dk * n
    return kx * kx + ky * ky


def _inverse(x: torch.Tensor) -> torch.Tensor:
    """1/x where x > 0, else 0 (the mean mode of an inversion)."""
    return torch.where(x > 0, 1 / x.where(x > 0, 1.0), 0.0)


def _isotropic(density: torch.Tensor, field: torch.Tensor, length: float, shells: str,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell wavenumbers and spectrum of a per-mode density on the rfft half plane of `field`."""
    h, w = field.shape[-2:]
    dk = 2.0 * math.pi / length
    n_half = w // 2 + 1
    # a half-plane mode stands for itself and its conjugate, except the k_x = 0 column and, for
    # even W, the Nyquist column, which are their own conjugates
    has_twin = torch.ones(n_half, dtype=torch.float64, device=field.device)
    has_twin[1:(w + 1) // 2] = 2.0
    weighted = (density.to(torch.float64) * has_twin).flatten(-2)
    if shells == "round":
        m, n = _mode_numbers(h, w, field.device)
        index = torch.sqrt(m * m + n * n).round().long().flatten()  # no ties: m² + n² is an integer
        spectrum = _bin_sums(weighted, index, int(index.max()) + 1) / dk
        k = dk * torch.arange(spectrum.shape[-1], device=field.device, dtype=torch.float64)
    else:
        k, spectrum = _pyqg_bins(weighted, h, w, length)
    return k.to(field.dtype), spectrum.to(field.dtype)


def _bin_sums(values: torch.Tensor, index: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Sums of values (..., N) over bins index (N,) in [0, n_bins]; bin n_bins is dropped."""
    out = values.new_zeros(*values.shape[:-1], n_bins + 1)
    return out.index_add_(-1, index, values)[..., :n_bins]


def _pyqg_bins(weighted: torch.Tensor, h: int, w: int, length: float,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """pyqg's calc_ispec (averaging=True, truncate=True) on conjugate-weighted densities."""
    dk = 2.0 * math.pi / length
    wv = torch.sqrt(_wavenumber_squared(h, w, length, weighted.device)).flatten()
    dkr = math.sqrt(dk**2 + dk**2)
    kmax = dk * min(h // 2, w // 2)
    n_bins = math.ceil(kmax / dkr)
    left = dkr * torch.arange(n_bins, device=wv.device, dtype=torch.float64)
    index = torch.searchsorted(left, wv, right=True) - 1
    index = torch.where((index < n_bins - 1) | (wv <= left[-1] + dkr), index, n_bins)
    # pyqg halves the density of its first and last columns, then takes the mean per bin
    sums = _bin_sums(weighted / 2, index, n_bins)
    counts = _bin_sums(torch.ones_like(wv), index, n_bins).clamp_min(1)
    centre = left + dkr / 2
    return centre, sums / counts * centre * math.pi / (dk * dk) * 2
