"""The package version, in one place: pyproject.toml reads it, the package face re-exports it."""

__version__ = "0.4.0"
