"""The plugin manager: entry points, load failures, name clashes, the allowlist, tracing."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from csm_core import hookimpl
from csm_core.errors import PluginConflictError, UnknownNameError
from csm_core.plugins import Plugins, allowlist_from_env
from csm_core.records import Backend, StageImpl
from csm_core.registry import Registry


@pytest.fixture(autouse=True)
def plugin_modules_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def entry_point(name: str, module: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"plugin_modules.{module}", group="csm_multi")


def test_entry_point_plugins_register_backends():
    plugins = Plugins()
    plugins.load_entry_points([entry_point("a", "backend_a")])
    registry = Registry.collect(plugins)
    assert sorted(registry.backends) == ["only-a", "shared"]
    assert registry.backends["shared"].plugin == "a"
    assert [info.name for info in plugins.describe()] == ["a"]
    assert plugins.describe()[0].hooks == ("register_backends",)


def test_plugin_whose_import_raises_is_recorded_not_fatal():
    plugins = Plugins()
    plugins.load_entry_points([entry_point("broken", "broken"), entry_point("a", "backend_a")])
    assert [failure.name for failure in plugins.failures] == ["broken"]
    failure = plugins.failures[0]
    assert "a_dependency_that_is_not_installed" in failure.error
    assert failure.target == "plugin_modules.broken"
    assert "Traceback" in failure.traceback
    # the plugin after the broken one still loaded
    assert "only-a" in Registry.collect(plugins).backends


def test_hook_that_raises_is_recorded_and_others_still_register():
    plugins = Plugins()
    plugins.load_entry_points([entry_point("bad-hook", "raises_in_hook"), entry_point("a", "backend_a")])
    registry = Registry.collect(plugins)
    assert "only-a" in registry.backends
    assert [(f.name, f.target) for f in registry.failures] == [("bad-hook", "register_tts")]
    assert "model directory missing" in registry.failures[0].error


def test_name_clash_is_an_error_naming_both_plugins():
    plugins = Plugins()
    plugins.load_entry_points([entry_point("a", "backend_a"), entry_point("b", "backend_b")])
    with pytest.raises(PluginConflictError) as excinfo:
        Registry.collect(plugins)
    message = str(excinfo.value)
    assert "backend 'shared'" in message and "'a'" in message and "'b'" in message
    lenient = Registry.collect(plugins, strict=False)
    assert lenient.backends["shared"].plugin == "a" and len(lenient.conflicts) == 1


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("", frozenset()), ("a, b ,", frozenset({"a", "b"}))],
)
def test_allowlist_parsing(value, expected):
    environ = {} if value is None else {"CSM_LOAD_PLUGINS": value}
    assert allowlist_from_env(environ) == expected


def test_allowlist_loads_only_the_named_plugins():
    eps = [entry_point("a", "backend_a"), entry_point("b", "backend_b"), entry_point("broken", "broken")]
    plugins = Plugins(allowlist=frozenset({"b"}))
    plugins.load_entry_points(eps)
    assert [info.name for info in plugins.describe()] == ["b"]
    assert plugins.failures == []  # 'broken' was never imported
    assert list(Registry.collect(plugins).backends) == ["shared"]


def test_empty_allowlist_loads_nothing_and_unknown_names_are_reported():
    plugins = Plugins(allowlist=frozenset())
    plugins.load_entry_points([entry_point("a", "backend_a")])
    assert plugins.describe() == []
    plugins = Plugins(allowlist=frozenset({"nope"}))
    plugins.load_entry_points([entry_point("a", "backend_a")])
    assert len(plugins.failures) == 1 and "installed: a" in plugins.failures[0].error


def test_from_environment_finds_the_in_tree_plugins_through_entry_points():
    plugins = Plugins.from_environment({})
    names = [info.name for info in plugins.describe()]
    assert "pytorch" in names
    pytorch = next(info for info in plugins.describe() if info.name == "pytorch")
    assert pytorch.distribution == "csm-multi"


def test_unknown_names_say_choose_one_of():
    class Tts:
        @hookimpl
        def register_tts(self, register):
            register(StageImpl(name="csm", factory=lambda context: None))

        @hookimpl
        def register_backends(self, register):
            register(Backend(name="pytorch", engines={}, check=lambda: None))

    plugins = Plugins()
    plugins.register(Tts(), name="tts")
    registry = Registry.collect(plugins)
    with pytest.raises(UnknownNameError, match=r"unknown backend 'onnx': choose one of pytorch"):
        registry.backend("onnx")
    with pytest.raises(UnknownNameError, match=r"unknown tts stage 'kokoro': choose one of csm"):
        registry.stage("tts", "kokoro")
    with pytest.raises(UnknownNameError, match=r"unknown optimizer 'turbo': choose one of \(none"):
        registry.optimizer("turbo")


def test_register_rejects_the_wrong_record_type():
    class Wrong:
        @hookimpl
        def register_backends(self, register):
            register(StageImpl(name="x", factory=lambda context: None))

    plugins = Plugins()
    plugins.register(Wrong(), name="wrong")
    registry = Registry.collect(plugins)
    assert registry.backends == {}
    assert "takes a Backend, got StageImpl" in registry.failures[0].error


def test_record_names_are_validated():
    with pytest.raises(ValueError, match="Backend.name"):
        Backend(name="has space", engines={}, check=lambda: None)


def test_tracing_logs_hook_calls(caplog):
    plugins = Plugins(trace=True)
    plugins.load_entry_points([entry_point("a", "backend_a")])
    with caplog.at_level(logging.INFO, logger="csm.hooks"):
        Registry.collect(plugins)
        plugins.hook.run_stage(stage="tts", call=lambda: 42, turn=None)
    text = caplog.text
    assert "plugin 'a' registered backend 'only-a'" in text
    assert "run_stage" in text


# --------------------------------------------------------------------------------- `csmctl plugins`
def csmctl_plugins(columns: int, *args: str) -> subprocess.CompletedProcess:
    csmctl = shutil.which("csmctl") or str(Path(sys.executable).parent / "csmctl")
    environ = {**os.environ, "NO_COLOR": "1", "COLUMNS": str(columns)}
    return subprocess.run([csmctl, "plugins", *args], capture_output=True, text=True, env=environ, timeout=120)


@pytest.mark.parametrize("columns", [80, 200, 40])
def test_csmctl_plugins_never_breaks_a_name(columns):
    """At 80 columns the table would be 96 wide: names must stay whole (no ``register_sentiment_a`` /
    ``nalyzers``) and no line may run past the terminal unless one name alone is wider than it."""
    report = json.loads(csmctl_plugins(columns, "--json").stdout)
    shown = csmctl_plugins(columns)
    assert shown.returncode == 0, shown.stderr
    names = [n for p in report["plugins"] for n in (p["name"], *p["hooks"], *p["registered"])]
    assert "register_sentiment_analyzers" in names
    words = set(re.findall(r"[\w:.-]+", shown.stdout))
    assert [n for n in names if n not in words] == []  # each name appears whole, on one line
    assert "…" not in shown.stdout  # nothing cut off either
    widest = len("  registered  ") + max(len(n) for n in names) + len(",")  # a block line holding one name
    assert max(len(line.rstrip()) for line in shown.stdout.splitlines()) <= max(columns, widest)
