"""Helpers of the onnxruntime plugin tests."""

from __future__ import annotations


def make_context(cache_dir, **settings):
    import logging

    from csm_core.config import Settings
    from csm_core.plugins import Plugins
    from csm_core.records import StageContext
    from csm_core.registry import Registry
    import csm_onnxruntime.plugin as ort_plugin

    plugins = Plugins()
    plugins.register(ort_plugin, name="onnxruntime")
    registry = Registry.collect(plugins)
    s = Settings(backend="onnxruntime", cache_dir=cache_dir, models={"preset": "tiny"}, **settings)
    return StageContext(stage="tts", settings=s, registry=registry, backend=registry.backend("onnxruntime"),
                        log=logging.getLogger("csm.test"))
