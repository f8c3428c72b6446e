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

A plugin may also add a command group, or a subcommand to a group another plugin adds (one plugin
makes ``csmctl bench``, another adds ``csmctl bench serve`` to it): see :func:`command_group`.

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
    """The command group ``name`` of ``cli`` (``csmctl bench``), created empty when no plugin has made it yet.

    Plugins add subcommands to a group, and one of them may give it a callback (what ``csmctl bench``
    alone runs); the order the plugins load in does not matter, since each takes the same group::

        @command_group(cli, "bench").command("serve")
        def bench_serve(...): ...

        command_group(cli, "bench").callback(invoke_without_command=True)(bench)

    A group with no callback only holds its subcommands (``csmctl bench`` alone is then a usage error).
    """
    for group in cli.registered_groups:
        if group.name == name:
            return group.typer_instance
    group = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cli.add_typer(group, name=name)
    return group


def _typers(app: typer.Typer) -> list[typer.Typer]:
    return [app] + [group.typer_instance for group in app.registered_groups]


def _snapshot(app: typer.Typer) -> tuple[int, list[tuple[typer.Typer, int, object]]]:
    """What ``app`` holds now (to roll a plugin's additions back): how many groups, and how many commands
    and which callback ``app`` and each of its groups have."""
    return len(app.registered_groups), [
        (owner, len(owner.registered_commands), owner.registered_callback) for owner in _typers(app)
    ]


def _restore(app: typer.Typer, snapshot: tuple[int, list[tuple[typer.Typer, int, object]]]) -> None:
    groups, owners = snapshot
    for owner, count, callback in owners:
        del owner.registered_commands[count:]
        owner.registered_callback = callback
    del app.registered_groups[groups:]


def _callbacks(app: typer.Typer) -> dict[str, object]:
    """Each group's callback function (None for a group without one), by group name."""
    return {group.name: getattr(group.typer_instance.registered_callback, "callback", None)
            for group in app.registered_groups}


def _names(app: typer.Typer) -> list[str]:
    """Every command path: ``say``, ``bench serve``, ..."""
    names = [_name(command) for command in app.registered_commands]
    for group in app.registered_groups:
        names += [f"{group.name} {_name(command)}" for command in group.typer_instance.registered_commands]
    return names


def add_plugin_commands(app: typer.Typer, plugins=None) -> list[CommandFailure]:
    """Call every plugin's ``register_commands(cli=app)``; returns the ones that raised.

    ``plugins`` is a :class:`csm_core.plugins.Plugins` (default: loaded from the environment, as every
    command loads them). A command or group name that is already taken, or a group callback that another
    plugin already set, is a failure of the plugin that adds it; a failing plugin's commands, groups and
    callbacks are all rolled back.
    """
    if plugins is None:
        from csm_core.plugins import Plugins

        plugins = Plugins.from_environment()
    failures = []
    for impl in plugins.hook.register_commands.get_hookimpls():
        before, callbacks, snapshot = _names(app), _callbacks(app), _snapshot(app)
        try:
            impl.function(cli=app)
            after = _names(app) + [group.name for group in app.registered_groups]
            taken = sorted({name for name in [*before, *callbacks] if after.count(name) > 1})
            if taken:
                raise ValueError(f"command {taken[0]!r} already exists; choose another name")
            replaced = sorted(name for name, callback in _callbacks(app).items()
                              if callbacks.get(name) is not None and callback is not callbacks[name])
            if replaced:
                raise ValueError(f"command group {replaced[0]!r} already has a callback")
            typer.main.get_command(app)  # a signature typer cannot turn into options fails here, not at run time
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never take the CLI down
            _restore(app, snapshot)
            failures.append(CommandFailure(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
    return failures


def _name(command) -> str:
    return command.name or command.callback.__name__.replace("_", "-")
