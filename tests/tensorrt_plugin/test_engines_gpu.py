"""The real engine path: build from ONNX, run, parity with ONNX Runtime. Needs TensorRT and a CUDA GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]


@pytest.fixture
def trt_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: pip install 'csm-multi[tensorrt]'")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: torch.cuda.is_available() is False")
    return trt


def test_tiny_graph_builds_runs_and_matches_onnxruntime(trt_gpu, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from csm_tensorrt.builder import build_engine
    from csm_tensorrt.runtime import TrtRunner

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [1, "T", 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["inputs_embeds", "W"], ["logits"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, tmp_path / "g.onnx")
    engine = build_engine(tmp_path / "g.onnx", {"inputs_embeds": ((1, 1, 8), (1, 4, 8), (1, 16, 8))},
                          workspace_bytes=1 << 28, timing_cache=tmp_path / "timing.cache", report=print)
    assert (tmp_path / "timing.cache").exists()
    runner = TrtRunner(engine, torch.device("cuda"), "g")
    inp = torch.randn(1, 5, 8)
    out = runner.run({"inputs_embeds": inp.cuda()})["logits"].cpu()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"inputs_embeds": inp.numpy()})[0]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-3, rtol=1e-3)

