"""Install sns-engine; the optional CUDA extension in csrc/ is added in a later step.

All metadata lives in pyproject.toml. This file exists so the optional CUDA extension can be
built when CUDA torch and nvcc are present, and skipped (pure-Python install) otherwise.
"""

from setuptools import setup

setup()
