"""Precision plans on the onnxruntime backend: written into the graphs, keyed in the cache, and
measured against the float32 graphs; a plan the provider cannot run is a clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from csm_core.config import Settings
from csm_core.errors import CsmError
from csm_export.artifacts import ArtifactSpec, weights_hash
from csm_export.specs import csm_spec
from csm_onnxruntime.engines import _open_graph, _typed_export
from csm_export.precision import PrecisionPlan, plan_for


def test_plan_for_reads_each_part_and_refuses_one_plan_for_differing_parts():
    settings = Settings(precision="fp16", component_precision={"decoder": "fp32"})
    assert (plan_for(settings, "backbone").dtype, plan_for(settings, "decoder").dtype) == ("fp16", "fp32")
    assert plan_for(settings, "codec").dtype == "fp32"  # the codec stays fp32 unless named
    with pytest.raises(ValueError, match="backbone fp16 and the decoder fp32"):
        plan_for(settings, "csm")
    assert plan_for(Settings(component_precision={"csm": "bf16"}), "csm").dtype == "bf16"


def test_the_plan_is_part_of_the_graph_cache_key(tiny_csm):
    model = tiny_csm[0]
    whash = weights_hash(model)
    keys = {dtype: csm_spec(model, "decoder", whash, 1, PrecisionPlan(dtype)).key() for dtype in ("fp32", "fp16", "bf16")}
    assert len(set(keys.values())) == 3
    assert csm_spec(model, "decoder", whash, 1).key() == keys["fp32"]


def _matmul_graph(path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["h", "h"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    model.graph.output[0].name = "out"  # not a logits output: the Mul runs in the plan's dtype
    model.graph.node[1].output[0] = "out"
    onnx.save_model(model, str(path))


def test_a_bf16_graph_on_the_cpu_provider_is_an_error_naming_the_provider_and_what_to_do(tmp_path):
    from ort_helpers import make_context

    context = make_context(tmp_path)
    plan = PrecisionPlan("bf16")
    spec = ArtifactSpec("bf16_probe", "0" * 16, export={"precision": plan.as_dict()})
    with pytest.raises(CsmError) as excinfo:
        _open_graph(context, spec, _typed_export(_matmul_graph, plan), "cpu", plan)
    message = str(excinfo.value)
    assert "CPUExecutionProvider cannot run the bf16 graph" in message
    assert "NOT_IMPLEMENTED" in message and "component_precision" in message and "cuda" in message


def test_an_fp16_graph_runs_on_the_cpu_provider(tmp_path):
    from ort_helpers import make_context

    context = make_context(tmp_path)
    plan = PrecisionPlan("fp16")
    spec = ArtifactSpec("fp16_probe", "0" * 16, export={"precision": plan.as_dict()})
    session, device, artifact = _open_graph(context, spec, _typed_export(_matmul_graph, plan), "cpu", plan)
    stored = onnx.load_model(str(artifact.path))
    assert {i.data_type for i in stored.graph.initializer} == {TensorProto.FLOAT16}
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x * x, rtol=1e-3)


@pytest.mark.slow
def test_fp16_csm_graphs_stay_within_the_selective_precision_bound(ort_csm, onnx_cache, tiny_csm):
    """fp16 backbone/decoder graphs against the fp32 graphs: logits, cache dtypes, teacher-forced agreement.

    Measured (tiny, CPU provider): logits rel. error 3e-4; teacher-forced agreement 1.0; free-running
    greedy codes agree on 0.4 of 4 frames (near-ties of random weights flip, then the continuation differs).
    """
    from ort_helpers import make_context

    from csm_core.generation.embedder import FrameEmbedder
    from csm_core.generation.frames import generate_codes
    from csm_core.generation.sampling import SamplingParams
    from csm_onnxruntime.engines import OnnxCsmEngines
    from csm_optimizers.selective_precision import teacher_forced_agreement

    reference_engines = ort_csm[0]
    model = tiny_csm[0]
    engines = OnnxCsmEngines(model, make_context(onnx_cache, component_precision={"csm": "fp16"}))
    assert {p.dtype for p in engines.plans.values()} == {"fp16"}
    session = engines.backbone.graphs.sessions["backbone_step"]
    types = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert types["past_key_values.0.key"] == "tensor(float16)" and types["inputs_embeds"] == "tensor(float)"
    assert outputs["logits"] == outputs["hidden_states"] == "tensor(float)"

    embedder = FrameEmbedder.from_model(model)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.zeros(1, 12, model.args.num_codebooks + 1, dtype=torch.long)
    tokens[..., -1] = torch.randint(0, 256, (1, 12), generator=gen)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[..., -1] = True
    logits = {}
    for name, e in (("fp32", reference_engines), ("fp16", engines)):
        e.backbone.reset()
        logits[name] = e.backbone.prefill(embedder.embed_frames(tokens, mask), torch.arange(12)[None])[1]
    assert logits["fp16"].dtype == torch.float32
    error = float((logits["fp16"] - logits["fp32"]).norm() / logits["fp32"].norm())
    assert 0.0 < error <= 3e-3
    greedy = SamplingParams(temperature=0.0, code_limit=2048)
    reference = generate_codes(reference_engines, embedder, (tokens, mask), max_frames=3, sampling=greedy, silence_guard=None)
    assert teacher_forced_agreement(engines, embedder, (tokens, mask), reference, greedy.code_limit) >= 0.98


def test_reduced_initializers_round_like_torch_and_clamp_to_the_fp16_range():
    from csm_export.precision import to_bfloat16_bits, to_float16

    values = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100
    values[:3] = (np.inf, -np.inf, np.nan)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bits = to_bfloat16_bits(values)
    np.testing.assert_array_equal(bits[3:], expected[3:])
    assert bits[0] == 0x7F80 and bits[1] == 0xFF80 and (bits[2] & 0x7F80) == 0x7F80 and bits[2] & 0x7F
    half = to_float16(np.array([3.4e38, -3.4e38, np.inf, 1.5], dtype=np.float32))
    assert half.tolist() == [65504.0, -65504.0, float("inf"), 1.5]


def test_a_reduced_codec_precision_is_an_error_not_ignored(tmp_path, tiny_mimi):
    from ort_helpers import make_context

    from csm_onnxruntime.engines import OnnxMimi

    with pytest.raises(CsmError, match="onnxruntime backend runs the Mimi codec in fp32 only"):
        OnnxMimi(tiny_mimi, make_context(tmp_path, component_precision={"codec": "bf16"}))
