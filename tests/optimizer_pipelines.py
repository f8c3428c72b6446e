"""Tiny-preset pipelines for the optimizer tests, with the in-tree plugins loaded through their entry
points (the path users take): ``pytorch`` and ``optimizers``, plus whatever else a test names."""

from __future__ import annotations

from csm_core.config import Settings
from csm_core.pipeline import Pipeline
from csm_core.plugins import Plugins


def tiny_pipeline(*extra_plugins: str, **settings) -> Pipeline:
    """A pipeline on the tiny preset, on CPU unless ``device`` is given; ``settings`` as for Settings."""
    settings.setdefault("models", {"preset": "tiny"})
    settings.setdefault("device", "cpu")
    load = ",".join(("pytorch", "optimizers", *extra_plugins))
    return Pipeline(Settings(**settings), Plugins.from_environment({"CSM_LOAD_PLUGINS": load}))
