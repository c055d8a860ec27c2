"""sns_engine: self-refining neural surrogates (SNS) of chaotic dynamical systems."""

__version__ = "0.1.0"
