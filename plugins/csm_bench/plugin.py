"""Hooks of the in-tree bench plugin: the ``csmctl bench`` command group.

``csmctl bench`` alone runs the matrix (:func:`csm_bench.command.bench` is the group's callback);
other plugins add subcommands to the same group (``csmctl bench serve`` comes from ``csm_serve``).
:func:`csm_core.plugin_commands.command_group` finds the group or makes it, so the order the plugins
load in does not matter. Nothing heavy is imported here: the cells load their models when they run.
"""

from __future__ import annotations

from csm_core import hookimpl


@hookimpl
def register_commands(cli):
    """``csmctl bench``: the matrix when given no subcommand."""
    from csm_bench.command import bench
    from csm_core.plugin_commands import command_group

    command_group(cli, "bench").callback(invoke_without_command=True)(bench)
