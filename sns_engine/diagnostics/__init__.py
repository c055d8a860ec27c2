"""Quality metrics of trajectories: spectra and statistics, batched in torch.

They know nothing of models or the engine; `evaluate` applies them to stores."""

from sns_engine.diagnostics.spectra import (
    DiagnosticsError,
    energy_spectrum,
    enstrophy_spectrum,
    isotropic_spectrum,
    qg_layer_energy_spectra,
    relative_spectrum_error,
)
from sns_engine.diagnostics.statistics import (
    autocorrelation,
    decorrelation_time,
    rate_of_change,
    stability_time,
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
    "qg_layer_energy_spectra",
    "rate_of_change",
    "relative_spectrum_error",
    "stability_time",
    "survival_curve",
    "wasserstein1",
]
