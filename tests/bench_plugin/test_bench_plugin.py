"""The bench plugin: ``csmctl bench`` comes from it, not from the core, in whatever order plugins load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from csm_core.plugin_commands import add_plugin_commands
from csm_core.plugins import Plugins


def _imported(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            check=True)
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}


def test_the_core_cli_names_no_bench():
    tops = {name.split(".")[0] for name in _imported("import csm_core.cli")}
    assert "csm_core" in tops
    assert not tops & {"csm_bench", "csm_model", "csm_pytorch", "torch"}


def test_the_package_is_light_and_its_public_names_load_on_use():
    imported = _imported("import csm_bench")
    assert not {name.split(".")[0] for name in imported} & {"torch", "numpy", "matplotlib"}
    assert "csm_bench.report" not in imported and "csm_bench.machine" not in imported
    import csm_bench
    from csm_bench import machine_info, write_json
    from csm_bench.machine import machine_info as home_machine_info
    from csm_bench.report import write_json as home_write_json

    assert sorted(csm_bench.__all__) == ["machine_info", "write_json"]
    assert (machine_info, write_json) == (home_machine_info, home_write_json)
    with pytest.raises(AttributeError):
        csm_bench.no_such_name  # noqa: B018


@pytest.mark.parametrize("first", ["bench", "serve"])
def test_bench_and_bench_serve_whichever_plugin_loads_first(first):
    import csm_bench.plugin
    import csm_serve.plugin
    from csm_bench.command import bench

    modules = {"bench": csm_bench.plugin, "serve": csm_serve.plugin}
    plugins = Plugins()
    for name in sorted(modules, key=lambda name: name != first):
        plugins.register(modules[name], name=name)
    app = typer.Typer()

    @app.command()
    def say() -> None:
        """A core command."""

    assert add_plugin_commands(app, plugins) == []
    [group] = app.registered_groups
    assert group.name == "bench" and group.typer_instance.registered_callback.callback is bench
    assert [c.name for c in group.typer_instance.registered_commands] == ["serve"]
    command = typer.main.get_command(app).commands["bench"]
    assert command.invoke_without_command and "serve" in command.commands
    assert {"--backends", "--presets", "--frames", "--out"} <= {o for p in command.params for o in p.opts}
