"""`sns-engine study`: every method against the solver floor on one ensemble. Modules: config
(settings, methods), pipeline (the resumable stages; the layout of a study folder), costs (pilots,
work and time of every rollout), checksums (the bundle files a study uses), outcomes (members'
fates, survival, decorrelation bounds), criteria (the pre-registered verdicts), report."""

from sns_engine.study.config import (
    METHODS,
    SOLVER,
    Criteria,
    Method,
    StudyConfig,
    StudyError,
    load_recipe,
    parse_method,
)
from sns_engine.study.pipeline import run_study

__all__ = ["METHODS", "SOLVER", "Criteria", "Method", "StudyConfig", "StudyError", "load_recipe",
           "parse_method", "run_study"]
