"""Fixtures of the onnxruntime plugin tests: random CSM/Mimi of a preset and their exported graphs,
each built once per session and preset (``tiny`` for most tests, ``small`` for the slow parity ones)."""

from __future__ import annotations

from functools import cache

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class PresetModels:
    """Random-weight models of a preset (seed 0) and their ONNX Runtime engines, each built on first use."""

    def __init__(self, cache_dir) -> None:
        self.cache_dir = cache_dir

    @cache
    def csm(self, preset: str):
        """(Csm, text tokenizer)."""
        from csm_model.presets import build_preset

        return build_preset(preset, 0)

    @cache
    def mimi(self, preset: str):
        from csm_model.mimi import random_mimi

        return random_mimi(preset, 0)

    @cache
    def ort_csm(self, preset: str):
        """(OnnxCsmEngines, its StageContext)."""
        from ort_helpers import make_context
        from csm_onnxruntime.engines import OnnxCsmEngines

        context = make_context(self.cache_dir)
        return OnnxCsmEngines(self.csm(preset)[0], context), context

    @cache
    def ort_mimi(self, preset: str):
        """(OnnxMimi, its StageContext)."""
        from ort_helpers import make_context
        from csm_onnxruntime.engines import OnnxMimi

        context = make_context(self.cache_dir)
        return OnnxMimi(self.mimi(preset), context), context


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def preset_models(onnx_cache) -> PresetModels:
    return PresetModels(onnx_cache)


@pytest.fixture(scope="session")
def tiny_csm(preset_models):
    return preset_models.csm("tiny")


@pytest.fixture(scope="session")
def tiny_mimi(preset_models):
    return preset_models.mimi("tiny")


@pytest.fixture(scope="session")
def ort_csm(preset_models):
    return preset_models.ort_csm("tiny")


@pytest.fixture(scope="session")
def ort_mimi(preset_models):
    return preset_models.ort_mimi("tiny")
