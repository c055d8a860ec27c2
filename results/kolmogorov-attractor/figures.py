"""Redraw this study's figures from its committed evaluation reports with the current plots.

    python results/kolmogorov-attractor/figures.py

Writes figures/*.png (every study figure but snapshots.png) and figures/<method>/*.png. The
rollout stores are not committed, so figures/snapshots.png stays as the study drew it (row labels
clipped, frozen members unmarked: see the issue that fixed both).
"""

import json
from pathlib import Path

from sns_engine import plots
from sns_engine.study import SOLVER, outcomes
from sns_engine.study.config import slug
from sns_engine.systems import units

HERE = Path(__file__).resolve().parent

study = json.loads((HERE / "study.json").read_text())
labels = [m for m in (SOLVER, *study["methods"]) if (HERE / "reports" / f"{slug(m)}.json").exists()]
reports = {m: json.loads((HERE / "reports" / f"{slug(m)}.json").read_text()) for m in labels}
u = units(study["system"], ["vorticity"])
survival = {m: outcomes.survival(r) for m, r in reports.items()}
figures = plots.study_figure_set(reports, u, survival)
written = plots.write_figures({HERE / "figures" / name: fig for name, fig in figures.items()})
for m in labels:
    written += plots.report_figures(reports[m], HERE / "figures" / slug(m), u)
print("\n".join(str(p.relative_to(HERE)) for p in written))
