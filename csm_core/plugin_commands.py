"""Commands that plugins add to ``csmctl`` through the ``register_commands`` hook.

The core's CLI (:mod:`csm_core.cli`) holds the commands every installation has; a plugin adds its own
(``csmctl serve``, ``csmctl train``, ...) the way llm's plugins do::

    from csm_core import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command()
        def hello(name: str) -> None:
            \"\"\"Say hello.\"\"\"
            print(f"hello {name}")

Each implementation is called on its own, so one that raises costs only its own commands: the failure
is kept and shown as a warning line, and the CLI still starts. The module that implements the hook
must stay light to import (the hook runs at every ``csmctl`` start): import torch and the like inside
the command functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer


@dataclass(frozen=True)
class CommandFailure:
    """A plugin whose ``register_commands`` raised: its name and the error."""

    plugin: str
    error: str


def command_group(cli: typer.Typer, name: str) -> typer.Typer:
    """The command group ``name`` of ``cli`` (``csmctl bench``), for a plugin to add a subcommand::

        @command_group(cli, "bench").command("serve")
        def bench_serve(...): ...

    An unknown group raises ``KeyError`` naming the groups there are.
    """
    for group in cli.registered_groups:
        if group.name == name:
            return group.typer_instance
    raise KeyError(f"csmctl has no command group {name!r}; groups: "
                   f"{', '.join(g.name for g in cli.registered_groups) or 'none'}")


def _snapshot(app: typer.Typer) -> list[tuple[typer.Typer, int]]:
    """How many commands ``app`` and each of its groups hold now (to roll a plugin's additions back)."""
    return [(app, len(app.registered_commands))] + [
        (group.typer_instance, len(group.typer_instance.registered_commands)) for group in app.registered_groups
    ]


def _names(app: typer.Typer) -> list[str]:
    """Every command path: ``say``, ``bench serve``, ..."""
    names = [_name(command) for command in app.registered_commands]
    for group in app.registered_groups:
        names += [f"{group.name} {_name(command)}" for command in group.typer_instance.registered_commands]
    return names


def add_plugin_commands(app: typer.Typer, plugins=None) -> list[CommandFailure]:
    """Call every plugin's ``register_commands(cli=app)``; returns the ones that raised.

    ``plugins`` is a :class:`csm_core.plugins.Plugins` (default: loaded from the environment, as every
    command loads them). A command name that is already taken is a failure of the plugin that adds it.
    """
    if plugins is None:
        from csm_core.plugins import Plugins

        plugins = Plugins.from_environment()
    failures = []
    for impl in plugins.hook.register_commands.get_hookimpls():
        before, counts = _names(app), _snapshot(app)
        try:
            impl.function(cli=app)
            after = _names(app)
            taken = sorted({name for name in before if after.count(name) > 1})
            if taken:
                raise ValueError(f"command {taken[0]!r} already exists; choose another name")
            typer.main.get_command(app)  # a signature typer cannot turn into options fails here, not at run time
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never take the CLI down
            for owner, count in counts:
                del owner.registered_commands[count:]
            failures.append(CommandFailure(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    return failures


def _name(command) -> str:
    return command.name or command.callback.__name__.replace("_", "-")
