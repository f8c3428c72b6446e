"""The TensorRT backend builds its engines from the ONNX Runtime backend's graphs: the ONNX export
settings it asks for (component, exporter, opset, batch size, cache size, dtype, facts) are those of
ONNX Runtime's ``ensure_artifact`` path, so one cached graph serves both. No TensorRT needed."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from csm_export.artifacts import weights_hash  # noqa: E402
from csm_export.specs import CSM_GRAPHS, csm_spec  # noqa: E402
from csm_tensorrt.artifacts import csm_graph_specs, mimi_graph_spec, onnx_graph  # noqa: E402


def context_for(cache_dir):
    from csm_core.config import Settings
    from csm_core.records import StageContext

    settings = Settings(backend="onnxruntime", device="cpu", cache_dir=cache_dir)
    return StageContext(stage="tts", settings=settings, registry=None, log=logging.getLogger("csm.test"))


@pytest.fixture(scope="module")
def tiny():
    from csm_model.mimi import random_mimi
    from csm_model.presets import build_preset

    return build_preset("tiny", 0)[0], random_mimi("tiny", 0)


def test_csm_specs_are_onnxruntimes_for_the_same_model(tiny):
    model, _ = tiny
    specs = csm_graph_specs(model)
    assert set(specs) == set(CSM_GRAPHS)
    for graph, spec in specs.items():
        ours = csm_spec(model, graph, weights_hash(model), 1)
        assert spec == ours and spec.filename() == ours.filename()
        assert spec.export["dtype"] == "float32" and spec.export["batch_size"] == 1
    assert specs["backbone_step"].facts["cache_size"] == model.args.max_seq_len
    assert specs["decoder"].facts["cache_size"] == model.args.num_codebooks


def test_a_half_precision_model_is_exported_as_float32(tiny):
    """TensorRT exports float32 and lowers precision itself: a bf16 model keys an fp32 graph."""
    import copy

    from csm_tensorrt.artifacts import _fp32

    half = copy.deepcopy(tiny[0]).to(torch.bfloat16)
    widened = _fp32(half)
    assert widened.codebook0_head.weight.dtype == torch.float32
    assert {spec.export["dtype"] for spec in csm_graph_specs(widened).values()} == {"float32"}


@pytest.mark.slow  # exports the tiny Mimi decoder graph (~10 s on 2 cores)
def test_the_mimi_graph_exported_for_tensorrt_is_reused_by_onnxruntime(tiny, tmp_path):
    """ONNX Runtime's codec engine keys its graph in its own constructor: it must find TensorRT's file.
    (The CSM graphs are keyed by ``csm_spec``, the function both call, compared above.)"""
    from csm_onnxruntime.engines import OnnxMimi
    from csm_export.export import export_mimi_decoder_step

    _, mimi = tiny
    trt_context = context_for(tmp_path)
    path = onnx_graph(trt_context, mimi_graph_spec(mimi, 32), lambda tmp: export_mimi_decoder_step(mimi, 32, tmp, 1))
    assert any("exporting" in event for event in trt_context.events)

    ort_context = context_for(tmp_path)
    codec = OnnxMimi(mimi, ort_context)
    assert not codec.artifact.built and codec.artifact.path == path
    assert not [e for e in ort_context.events if "exporting" in e or "rebuilding" in e]
