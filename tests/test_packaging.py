"""pyproject.toml ships every package of the source tree (a missing one installs fine in
editable mode and breaks a plain `pip install .`)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "sns_engine").rglob("__init__.py")}
    found |= {name for name, folder in config["package-dir"].items()
              if (ROOT / folder / "__init__.py").exists()}
    assert listed == found
