"""Imports fine, but its register hook raises."""

from csm_core import hookimpl


@hookimpl
def register_tts(register):
    raise RuntimeError("model directory missing")
