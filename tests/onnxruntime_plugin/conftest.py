"""Fixtures of the onnxruntime plugin tests: tiny random CSM/Mimi, their exported graphs (built once)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def tiny_csm():
    from csm_pytorch.presets import build_preset

    model, tokenizer = build_preset("tiny", 0)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_mimi():
    from csm_pytorch.mimi import random_mimi

    return random_mimi("tiny", 0)


@pytest.fixture(scope="session")
def ort_csm(onnx_cache, tiny_csm):
    from ort_helpers import make_context
    from csm_onnxruntime.engines import OnnxCsmEngines

    context = make_context(onnx_cache)
    engines = OnnxCsmEngines(tiny_csm[0], context)
    return engines, context


@pytest.fixture(scope="session")
def ort_mimi(onnx_cache, tiny_mimi):
    from ort_helpers import make_context
    from csm_onnxruntime.engines import OnnxMimi

    context = make_context(onnx_cache)
    return OnnxMimi(tiny_mimi, context), context
