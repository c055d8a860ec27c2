"""The import graph of the package points only down the layers listed in README.md ("Layout") and
in LAYERS below: a module may import its own layer and the layers below it, never one above. Every module
must be placed in a layer, so a new one is placed on purpose. Private names (`_x`) stay in their
module, and the Triton kernels import nothing of the package but themselves."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# bottom → top; a module belongs to the layer of its longest listed prefix
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sns_engine._version", "sns_engine.files", "sns_engine.config", "sns_engine.threads",
     "sns_engine.memory", "sns_engine.diffusion", "sns_engine.data", "sns_engine.kernels"),
    ("sns_engine.ops", "sns_engine.diagnostics", "sns_engine.systems"),
    ("sns_engine.models", "sns_engine.plots"),
    ("sns_engine.bundle",),
    ("sns_engine.engine", "sns_engine.train"),
    ("sns_engine.api", "sns_engine.authors", "sns_engine.calibration", "sns_engine.generation",
     "sns_engine.walk_bias"),
    ("sns_engine.study",),
    ("sns_engine.cli", "sns_engine"),
)


def source_files() -> dict[str, Path]:
    """Module name → file, for sns_engine/ and kernels/ (installed as sns_engine.kernels)."""
    files = {}
    for folder, package in ((ROOT / "sns_engine", "sns_engine"), (ROOT / "kernels", "sns_engine.kernels")):
        for file in folder.rglob("*.py"):
            parts = file.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((package, *parts))] = file
    return files


MODULES = source_files()


def layer_of(module: str) -> int:
    best = max(((len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
                if module == prefix or module.startswith(prefix + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py LAYERS")
    return best[1]


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every sns_engine import in `module`."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES
                             else (target, alias.name, node.lineno))
    return [f for f in found if f[0] == "sns_engine" or f[0].startswith("sns_engine.")]


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    here = layer_of(module)
    upward = [f"line {line}: {target}" + (f":{name}" if name else "")
              for target, name, line in imports(module) if layer_of(target) > here]
    assert not upward, f"{module} (layer {here}) imports upwards: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_stay_in_their_module(module):
    borrowed = [f"line {line}: {target}:{name}" for target, name, line in imports(module)
                if name is not None and name.startswith("_") and name != "__version__"
                and target != module]
    assert not borrowed, f"{module} imports private names of other modules: {borrowed}"


def test_no_modules_import_each_other():
    """The import graph has no cycle, within a layer too (function-level imports included): a
    name two modules both need lives in a module below both."""
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"modules import each other: {' → '.join(err.args[1])}") from None


def test_kernels_import_only_themselves():
    for module in (m for m in MODULES if m.startswith("sns_engine.kernels")):
        foreign = [t for t, _, _ in imports(module) if not t.startswith("sns_engine.kernels")]
        assert not foreign, f"{module} imports {foreign}; kernels/ may import only triton and torch"


def test_the_scan_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a module of the lowest layer importing the engine is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from sns_engine.engine.rollout import Engine\nfrom ..plots import _save\n")
    monkeypatch.setitem(MODULES, "sns_engine.data.bad", bad)
    found = imports("sns_engine.data.bad")
    assert ("sns_engine.engine.rollout", "Engine", 1) in found
    assert ("sns_engine.plots", "_save", 2) in found
    with pytest.raises(AssertionError, match="imports upwards"):
        test_imports_point_down("sns_engine.data.bad")
