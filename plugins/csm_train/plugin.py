"""Hooks of the in-tree train plugin (nothing heavy is imported here: the commands import the trainer)."""

from __future__ import annotations

from csm_core import hookimpl


@hookimpl
def register_commands(cli):
    """``csmctl train`` (see :mod:`csm_train.commands`) and ``csmctl eval`` (:mod:`csm_train.evaluation_command`)."""
    from csm_train.commands import add_train_command
    from csm_train.evaluation_command import add_eval_command

    add_train_command(cli)
    add_eval_command(cli)
