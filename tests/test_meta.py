"""Meta-tests in the style of datasette's: every hook is tested and documented, every command too."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from csm_core import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, "csm_multi_spec")
)


def test_hookspecs_are_found():
    assert "register_backends" in HOOKS and "run_stage" in HOOKS


def _hook_test_names() -> list[str]:
    """The names of the test functions in tests/core/test_hooks.py."""
    tree = ast.parse((REPO / "tests" / "core" / "test_hooks.py").read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    """As in datasette: a hook is covered by a test in test_hooks.py named ``test_hook_<hook>...``."""
    assert any(name.startswith(f"test_hook_{hook}") for name in _hook_test_names()), (
        f"tests/core/test_hooks.py has no test_hook_{hook}... test"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    """docs/plugins.md has a ``### hook(arg, ...)`` heading with the hookspec's argument names."""
    docs = (REPO / "docs" / "plugins.md").read_text()
    signature = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    assert re.search(rf"^### {re.escape(signature)}$", docs, re.MULTILINE), f"### {signature} missing"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring(hook):
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_typed_arguments(hook):
    signature = inspect.signature(getattr(hookspecs, hook))
    untyped = [name for name, p in signature.parameters.items() if p.annotation is inspect.Parameter.empty]
    assert not untyped and signature.return_annotation is not inspect.Signature.empty, untyped


def test_every_command_is_documented():
    """The core's commands and those the in-tree plugins add through ``register_commands``."""
    from csm_core.cli import app
    from csm_core.plugin_commands import _names, add_plugin_commands

    add_plugin_commands(app)
    docs = (REPO / "docs" / "cli.md").read_text()
    names = [*_names(app), *(group.name for group in app.registered_groups)]
    assert "bench" in names and "bench serve" in names
    for name in names:
        assert f"## csmctl {name}" in docs, f"docs/cli.md has no section for `csmctl {name}`"
