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



def _context(cache_dir, backend: str, device: str):
    import logging

    from csm_core.config import Settings
    from csm_core.records import StageContext

    settings = Settings(backend=backend, device=device, cache_dir=cache_dir, precision="fp32",
                        options={"tensorrt": {"workspace_gib": 1.0, "max_prefill_len": 64, "opt_prefill_len": 32}})
    return StageContext(stage="tts", settings=settings, registry=None, log=logging.getLogger("csm.test"))


def test_tiny_greedy_utterance_gives_the_codes_of_onnxruntime_and_pytorch(trt_gpu, tmp_path):
    """A whole greedy utterance after a context segment, fp32 plan: TensorRT (GPU), ONNX Runtime (CPU)
    and PyTorch (CPU) engines driven by the same frame loop give identical codes. The ONNX graphs are
    exported once (by the TensorRT path) and reused by ONNX Runtime."""
    import copy

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from csm_core.generation.embedder import FrameEmbedder
    from csm_core.generation.frames import generate_codes
    from csm_core.generation.prompt import build_prompt
    from csm_core.stages import Segment
    from csm_core.generation.sampling import SamplingParams
    from csm_onnxruntime.engines import OnnxCsmEngines
    from csm_pytorch.engines import TorchCsmEngines
    from csm_model.presets import build_preset
    from csm_tensorrt.artifacts import csm_engines

    model, tokenizer = build_preset("tiny", 0)
    k = model.args.num_codebooks
    context_codes = torch.randint(0, 2048, (k, 6), generator=torch.Generator().manual_seed(3))
    prompt = build_prompt([Segment(1, "how are you", context_codes)], 0, "fine thanks", tokenizer,
                          num_codebooks=k, max_frames=12, max_positions=model.args.max_seq_len)
    greedy = SamplingParams(temperature=0.0)

    def codes(engines, csm):  # the frame loop moves the prompt to the embedder's (= the weights') device
        return generate_codes(engines, FrameEmbedder.from_model(csm), prompt, max_frames=12, sampling=greedy,
                              silence_guard=None).cpu()

    on_gpu = copy.deepcopy(model).cuda()
    trt_context = _context(tmp_path, "tensorrt", "cuda")
    trt_codes = codes(csm_engines(on_gpu, trt_context), on_gpu)
    ort_context = _context(tmp_path, "onnxruntime", "cpu")
    ort_codes = codes(OnnxCsmEngines(model, ort_context), model)
    torch_codes = codes(TorchCsmEngines(copy.deepcopy(model)), model)

    assert not any("exporting" in event for event in ort_context.events)  # TensorRT's graphs were reused
    assert torch_codes.shape[-1] > 3
    assert torch.equal(ort_codes, torch_codes)
    assert torch.equal(trt_codes, torch_codes)
