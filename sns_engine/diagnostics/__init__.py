"""Quality metrics of trajectories: spectra and statistics, batched in torch.

They know nothing of models or the engine; `evaluate` applies them to stores."""

from sns_engine.diagnostics.spectra import (
    DiagnosticsError,
    energy_spectrum,
    enstrophy_spectrum,
    isotropic_spectrum,
    log_spectrum_error,
    qg_layer_energy_spectra,
    spectral_bands,
)
from sns_engine.diagnostics.statistics import (
    autocorrelation,
    decorrelation_time,
    rate_of_change,
    sign_test,
    stability_time,
    stationarity,
    survival_curve,
    wasserstein1,
)

__all__ = [
    "DiagnosticsError",
    "autocorrelation",
    "decorrelation_time",
    "energy_spectrum",
    "enstrophy_spectrum",
    "isotropic_spectrum",
    "log_spectrum_error",
    "qg_layer_energy_spectra",
    "rate_of_change",
    "spectral_bands",
    "sign_test",
    "stability_time",
    "stationarity",
    "survival_curve",
    "wasserstein1",
]
