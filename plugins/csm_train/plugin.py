"""Hooks of the in-tree train plugin (nothing heavy is imported here: the commands import the trainer)."""

from __future__ import annotations

from csm_core import hookimpl


@hookimpl
def register_commands(cli):
    """``csmctl train`` (see :mod:`csm_train.commands`)."""
    from csm_train.commands import add_train_command

    add_train_command(cli)
