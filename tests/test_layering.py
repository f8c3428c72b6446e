"""The package graph reads top-down: core <- shared layers <- plugins, with no arrow back up.

- ``csm_core`` imports no plugin and no shared layer, and names no in-tree plugin or optimizer;
- the shared layers (``csm_model``: the model, Mimi and the backend-neutral stages; ``csm_export``: the
  graphs ONNX Runtime and TensorRT share) import the core and the layers below them, never a plugin;
- a plugin imports the core, the shared layers and itself; of another plugin only the public names of
  its top-level package (``from csm_listen import extract_prosody``), never one of its modules.

Every import statement is read, those inside functions included (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "csm_core"
SHARED = {"csm_model": {CORE}, "csm_export": {CORE, "csm_model"}}  # layer -> the layers it may import
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file() and p.name not in SHARED)
ALL = {CORE, *SHARED, *PLUGINS}


def _modules(package: str) -> list[Path]:
    base = ROOT / CORE if package == CORE else ROOT / "plugins" / package
    return sorted(base.rglob("*.py"))


def _imports(path: Path):
    """``(line, imported module, imported names or None)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def _public(package: str) -> set[str]:
    return set(getattr(importlib.import_module(package), "__all__", ()))


def _violations(package: str) -> list[str]:
    allowed = {CORE} if package == CORE else ({package} | SHARED[package] if package in SHARED else {package, CORE, *SHARED})
    found = []
    for path in _modules(package):
        where = path.relative_to(ROOT)
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top not in ALL or top in allowed:
                continue
            if package in PLUGINS and top in PLUGINS and module == top:
                private = [n for n in (names or []) if n not in _public(top)]
                if names is not None and not private:
                    continue  # another plugin's public API
                if names is None:
                    continue  # ``import csm_x``: only its public attributes are reachable without a module path
                found.append(f"{where}:{line}: from {module} import {', '.join(private)} (not in {top}.__all__)")
                continue
            found.append(f"{where}:{line}: imports {module}")
    return found


@pytest.mark.parametrize("package", [CORE, *SHARED, *PLUGINS])
def test_imports_follow_the_layers(package):
    assert _violations(package) == []


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from csm_pytorch.engines import TorchCsmEngines\n")
    assert list(_imports(module)) == [(2, "csm_pytorch.engines", ["TorchCsmEngines"])]


def test_the_core_names_no_plugin_and_no_optimizer():
    """Optimizer names (from the registry, as users write them and as module names) and the package names of
    the plugins and layers appear nowhere in the core's source. A neutral setting that an optimizer switches
    on may share its concept's name (``Settings.weight_quantization``); the core's config may name the
    in-tree stage implementations as its defaults."""
    from csm_core.config import Settings
    from csm_core.plugins import Plugins
    from csm_core.registry import Registry

    optimizers = set(Registry.collect(Plugins.from_environment({"CSM_LOAD_PLUGINS": "optimizers"})).optimizers)
    assert optimizers, "the in-tree optimizers plugin registered nothing"
    modules = {o.replace("-", "_") for o in optimizers} - set(Settings.model_fields)
    names = optimizers | modules | set(SHARED) | set(PLUGINS)
    found = [
        f"{path.relative_to(ROOT)}:{number}: {name}"
        for path in _modules(CORE)
        for number, text in enumerate(path.read_text().splitlines(), start=1)
        for name in sorted(names)
        if name in text
    ]
    assert found == []
