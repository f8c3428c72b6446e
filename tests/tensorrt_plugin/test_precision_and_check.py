"""Precision plans written into real ONNX graphs, version parsing, and the backend's check() text."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from csm_core.errors import BackendUnavailable
from csm_tensorrt.precision import PrecisionPlan, convert_graph
from csm_tensorrt.versions import GpuIdentity, parse_version, version_problem


def small_graph() -> onnx.ModelProto:
    """x [2,4] -> MatMul W -> Softmax -> MatMul W2 -> logits; KV: past -> Add -> present."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Softmax", ["h"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "W"], ["q"]),
        helper.make_node("MatMul", ["q", "W2"], ["logits"]),
        helper.make_node("Add", ["past_key_values.0.key", "q"], ["present.0.key"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("x", "past_key_values.0.key")]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [2, 4]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return inferred, types


def test_fp16_plan_keeps_softmax_and_logits_in_fp32_and_kv_in_fp16():
    converted = convert_graph(small_graph(), PrecisionPlan("fp16"))
    onnx.checker.check_model(converted, full_check=True)
    inferred, types = _types(converted)
    by_output = {n.output[0]: n for n in inferred.graph.node}
    assert types[by_output["h"].input[0]] == TensorProto.FLOAT16  # the first MatMul runs in fp16
    assert types[by_output["p"].input[0]] == TensorProto.FLOAT  # Softmax gets a cast back to fp32
    assert all(types[i] == TensorProto.FLOAT for i in by_output["logits"].input)  # logits head in fp32
    assert types["logits"] == TensorProto.FLOAT and types["x"] == TensorProto.FLOAT
    assert types["past_key_values.0.key"] == TensorProto.FLOAT16 and types["present.0.key"] == TensorProto.FLOAT16


def test_fp16_graph_runs_and_stays_close_to_fp32():
    import onnxruntime as ort

    original = small_graph()
    converted = convert_graph(original, PrecisionPlan("fp16"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    past = rng.standard_normal((2, 4)).astype(np.float32)

    def run(model, past_value):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x, "past_key_values.0.key": past_value})

    ref_logits, ref_present = run(original, past)
    logits, present = run(converted, past.astype(np.float16))
    assert logits.dtype == np.float32 and present.dtype == np.float16
    np.testing.assert_allclose(logits, ref_logits, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(present.astype(np.float32), ref_present, rtol=2e-2, atol=2e-2)


def test_bf16_plan_types_the_graph_in_bf16():
    converted = convert_graph(small_graph(), PrecisionPlan("bf16"))
    onnx.checker.check_model(converted, full_check=True)
    _, types = _types(converted)
    assert types["W.bf16"] == TensorProto.BFLOAT16 and types["present.0.key"] == TensorProto.BFLOAT16


def test_fp32_plan_leaves_the_graph_as_is():
    original = small_graph()
    assert convert_graph(original, PrecisionPlan("fp32")) == original


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16, got 'int8'"):
        PrecisionPlan("int8")


def test_precision_plan_dict_is_order_independent():
    a = PrecisionPlan("fp16", fp32_ops=frozenset({"Softmax", "Pow"}))
    b = PrecisionPlan("fp16", fp32_ops=frozenset({"Pow", "Softmax"}))
    assert a.as_dict() == b.as_dict()


def test_versions():
    assert parse_version("10.13.0.35") == (10, 13)
    assert version_problem("10.12.0") is None and version_problem("11.0.1") is None
    assert "too old" in version_problem("10.3.0")
    with pytest.raises(ValueError, match="cannot read a TensorRT version from 'abc'"):
        parse_version("abc")
    gpu = GpuIdentity("10.13.0.35", "12.8", "NVIDIA H100 80GB HBM3", "9.0")
    assert gpu.slug() == "nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35"


def test_check_names_what_is_missing_here():
    import importlib.util

    import torch

    from csm_tensorrt.plugin import check_tensorrt

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a CUDA GPU are present: nothing is missing")
    with pytest.raises(BackendUnavailable) as error:
        check_tensorrt()
    message = str(error.value)
    if importlib.util.find_spec("tensorrt") is None:
        assert "the tensorrt package is not installed" in message
        assert "pip install 'csm-multi[tensorrt]'" in message
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in message and "torch.cuda.is_available() is False" in message


def test_registered_backend_record():
    from csm_tensorrt import plugin

    records = []
    plugin.register_backends(records.append)
    (backend,) = records
    assert backend.name == "tensorrt" and backend.devices == ("cuda",) and backend.prepare is not None
    assert set(backend.engines) == {"csm", "codec", "causal_lm", "speech_to_text"}
    assert backend.check is plugin.check_tensorrt


def test_doctor_lists_the_tensorrt_distribution():
    """``csmctl doctor``'s ``tensorrt`` line comes from the backend's ``doctor_checks``."""
    from csm_core.doctor import installed_versions
    from csm_tensorrt import plugin

    records = []
    plugin.register_backends(records.append)
    (check,) = records[0].doctor_checks()
    version = installed_versions(["tensorrt"])["tensorrt"]
    assert (check.name, check.ok, check.detail) == ("tensorrt", version is not None, version or "not installed")
