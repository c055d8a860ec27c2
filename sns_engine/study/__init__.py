"""`sns-engine study`: every method against the solver floor on one ensemble (config, pipeline,
report). See `pipeline` for the stages and the layout of a study folder."""

from sns_engine.study.config import (
    METHODS,
    Criteria,
    Method,
    StudyConfig,
    StudyError,
    load_recipe,
    parse_method,
)
from sns_engine.study.pipeline import SOLVER, run_study

__all__ = ["METHODS", "SOLVER", "Criteria", "Method", "StudyConfig", "StudyError", "load_recipe",
           "parse_method", "run_study"]
