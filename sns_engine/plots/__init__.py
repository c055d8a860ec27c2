"""PNG figures (matplotlib, no pyplot): every figure names its fields, units and times
(`sns_engine.data.cf`) and is written all or nothing.

    common       units and labels, reference check, count histograms, atomic writes
    fields       snapshots of every member, energy spectra over time
    evaluation   the figures of one evaluation report; what `sns-engine plot` writes
    head_calibration   the level heads' calibration (`sns-engine calibrate`)
    study        every method of a study against the solver floor
"""

from sns_engine.plots.common import check_reference, store_units, write_figures
from sns_engine.plots.evaluation import (
    plot_command,
    report_figure_set,
    report_figures,
    snapshots,
    spectrum,
)
from sns_engine.plots.fields import SNAPSHOT_MEMBERS, snapshot_figure, spectrum_figure
from sns_engine.plots.head_calibration import calibration
from sns_engine.plots.study import study_figure_set, study_figures

__all__ = ["SNAPSHOT_MEMBERS", "calibration", "check_reference", "plot_command",
           "report_figure_set", "report_figures", "snapshot_figure", "snapshots", "spectrum",
           "spectrum_figure", "store_units", "study_figure_set", "study_figures", "write_figures"]
