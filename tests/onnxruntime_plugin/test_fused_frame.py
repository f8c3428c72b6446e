"""The fused frame graph (:mod:`csm_export.frame_graph`) on ONNX Runtime (:mod:`csm_onnxruntime.frame_decoder`).

One call per frame, and the step path's codes: greedy over a whole utterance with a context segment
(``tiny`` and ``small``; also PyTorch's codes), seeded sampling under several settings (temperature,
top-k, top-p, code_limit, their edge values), many random frames through ``decode`` against the core's
``decode_frame``, the fp16 and int8 decoder plans, parameters the graph refuses (reported, decoded step
by step), the cache key and the cache.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from csm_core.errors import ConfigError
from csm_core.generation.embedder import FrameEmbedder
from csm_core.generation.frames import decode_frame, generate_codes
from csm_core.generation.prompt import build_prompt
from csm_core.generation.sampling import SamplingParams
from csm_core.stages import Segment

pytestmark = pytest.mark.slow  # exports the tiny (and small) graphs, shared through the session's cache

GREEDY = SamplingParams(temperature=0.0)
SAMPLING = {
    "sesame-defaults": SamplingParams(),  # temperature 0.9, top-k 50
    "top-p": SamplingParams(temperature=1.2, top_k=None, top_p=0.9),
    "top-k-top-p-limit": SamplingParams(temperature=0.7, top_k=20, top_p=0.5, code_limit=2048),
    "narrow-limit": SamplingParams(temperature=1.0, top_k=3, code_limit=100),
    "top-k-above-limit": SamplingParams(temperature=0.9, top_k=2051, code_limit=2048),
    "smallest-float32-temperature": SamplingParams(temperature=1e-45, top_k=None),
    "top-p-zero-in-float32": SamplingParams(temperature=0.8, top_k=None, top_p=1e-50),
    "greedy-by-top-k": SamplingParams(temperature=0.9, top_k=1),
}
SMALL_SAMPLING = ("sesame-defaults", "top-k-top-p-limit")  # small: the slow preset, two settings
DETERMINISTIC = {"smallest-float32-temperature", "top-p-zero-in-float32", "greedy-by-top-k"}  # one code each time


@pytest.fixture(scope="session")
def fused_engines(preset_models, onnx_cache):
    """preset -> (model, tokenizer, OnnxCsmEngines with the frame graph, their context), built once."""
    from ort_helpers import make_context

    from csm_onnxruntime.engines import OnnxCsmEngines

    built = {}

    def get(preset: str):
        if preset not in built:
            model, tokenizer = preset_models.csm(preset)
            context = make_context(onnx_cache)
            built[preset] = model, tokenizer, OnnxCsmEngines(model, context, fused_frame=True), context
        return built[preset]

    return get


def step_path(engines):
    """The same engines without their frame decoder: the frame loop decodes step by step."""
    return SimpleNamespace(backbone=engines.backbone, decoder=engines.decoder, frame_decoder=None)


def utterance(model, tokenizer, engines, sampling, seed: int = 0, frames: int = 12):
    k = model.args.num_codebooks
    context_codes = torch.randint(0, 2048, (k, 6), generator=torch.Generator().manual_seed(3))
    prompt = build_prompt([Segment(1, "how are you", context_codes)], 0, "fine thanks", tokenizer,
                          num_codebooks=k, max_frames=frames, max_positions=model.args.max_seq_len)
    return generate_codes(engines, FrameEmbedder.from_model(model), prompt, max_frames=frames, sampling=sampling,
                          seed=seed, silence_guard=None)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_greedy_codes_equal_the_step_path_and_pytorch(fused_engines, preset):
    from csm_pytorch.engines import TorchCsmEngines

    model, tokenizer, engines, _ = fused_engines(preset)
    fused = utterance(model, tokenizer, engines, GREEDY)
    assert fused.shape[-1] == 12
    assert torch.equal(fused, utterance(model, tokenizer, step_path(engines), GREEDY))
    assert torch.equal(fused, utterance(model, tokenizer, TorchCsmEngines(copy.deepcopy(model)), GREEDY))


@pytest.mark.parametrize(("preset", "name"), [*(("tiny", n) for n in SAMPLING), *(("small", n) for n in SMALL_SAMPLING)])
def test_seeded_sampling_gives_the_step_path_codes(fused_engines, preset, name):
    model, tokenizer, engines, _ = fused_engines(preset)
    runs = []
    for seed in (0, 1):
        runs.append(utterance(model, tokenizer, engines, SAMPLING[name], seed))
        assert torch.equal(runs[-1], utterance(model, tokenizer, step_path(engines), SAMPLING[name], seed)), seed
    assert torch.equal(runs[0], runs[1]) == (name in DETERMINISTIC)  # the seeds did choose the codes


def test_many_random_frames_equal_the_cores_decode_frame(fused_engines):
    model, _, engines, _ = fused_engines("tiny")
    embedder, gen = FrameEmbedder.from_model(model), torch.Generator().manual_seed(7)
    for params in (GREEDY, *SAMPLING.values()):
        for _ in range(25):
            hidden = torch.randn(1, model.args.backbone_dim, generator=gen)
            logits = torch.randn(1, model.args.audio_vocab_size, generator=gen) * 3
            seed = int(torch.randint(0, 2**31, (1,), generator=gen))
            fused = engines.frame_decoder.decode(hidden, logits, params, torch.Generator().manual_seed(seed))
            steps = decode_frame(engines, embedder, hidden, logits, params, torch.Generator().manual_seed(seed))
            assert torch.equal(fused, steps), params


def test_a_frame_is_one_call_and_no_decoder_step(fused_engines, monkeypatch):
    model, tokenizer, engines, _ = fused_engines("tiny")
    frame, real = engines.frame_decoder, engines.frame_decoder.session
    calls = []
    session = SimpleNamespace(io_binding=real.io_binding,
                              run_with_iobinding=lambda binding: calls.append(real.run_with_iobinding(binding)))
    monkeypatch.setattr(frame, "session", session)
    monkeypatch.setattr(engines.decoder, "step", lambda *a: pytest.fail("the decoder graph ran a step"))
    codes = utterance(model, tokenizer, engines, SAMPLING["sesame-defaults"], frames=5)
    assert codes.shape[-1] == 5 and len(calls) == 5


def test_parameters_the_graph_cannot_reproduce_are_decoded_step_by_step_and_reported(fused_engines):
    model, tokenizer, engines, context = fused_engines("tiny")
    underflow = SamplingParams(temperature=1e-50, top_k=None)  # > 0, but 0 in float32
    before = len(context.events)
    fused = utterance(model, tokenizer, engines, underflow, frames=3)
    assert not engines.frame_decoder.supports(underflow) and engines.frame_decoder.supports(SAMPLING["top-p"])
    assert torch.equal(fused, utterance(model, tokenizer, step_path(engines), underflow, frames=3))
    reports = [e for e in context.events[before:] if "fused frame graph cannot serve" in e]
    assert len(reports) == 1 and "temperature=1e-50" in reports[0] and "step by step" in reports[0]
    with pytest.raises(ValueError, match="check supports"):
        engines.frame_decoder.decode(torch.zeros(1, model.args.backbone_dim), torch.zeros(1, 2051), underflow)
    with pytest.raises(ValueError, match=r"must be \[1, D\] / \[1, 2051\]"):
        engines.frame_decoder.decode(torch.zeros(2, model.args.backbone_dim), torch.zeros(2, 2051), GREEDY)


@pytest.mark.parametrize("plan", ["fp16", "int8"])
def test_typed_and_quantized_decoder_plans_give_the_step_path_codes(preset_models, onnx_cache, plan):
    from ort_helpers import make_context

    from csm_export.quantization import QUANTIZED_OP
    from csm_onnxruntime.engines import OnnxCsmEngines

    model, tokenizer = preset_models.csm("tiny")
    settings = ({"component_precision": {"decoder": "fp16"}} if plan == "fp16"
                else {"weight_quantization": {"decoder": {"bits": 8, "block_size": 32}}})
    engines = OnnxCsmEngines(model, make_context(onnx_cache, **settings), fused_frame=True)
    import onnx

    frame_graph = onnx.load_model(str(engines.artifacts[-1].path), load_external_data=False)
    ops = {n.op_type for n in frame_graph.graph.node}
    assert (QUANTIZED_OP in ops) if plan == "int8" else any(i.data_type == onnx.TensorProto.FLOAT16
                                                             for i in frame_graph.graph.initializer)
    for sampling in (GREEDY, SAMPLING["sesame-defaults"]):
        fused = utterance(model, tokenizer, engines, sampling, frames=6)
        assert torch.equal(fused, utterance(model, tokenizer, step_path(engines), sampling, frames=6))


def test_the_cache_key_covers_the_decoder_graph_plan_quantization_and_codebooks(tiny_csm):
    from csm_export.frame_graph import frame_spec
    from csm_export.precision import PrecisionPlan
    from csm_export.quantization import WeightPlan
    from csm_export.specs import csm_spec

    model, _ = tiny_csm
    plans = [PrecisionPlan(), PrecisionPlan("fp16"), PrecisionPlan(weights=WeightPlan(8, 32)),
             PrecisionPlan(weights=WeightPlan(4, 32))]
    specs = [frame_spec(model, "w" * 16, 1, plan) for plan in plans] + [frame_spec(model, "w" * 16, 2)]
    assert len({s.key() for s in specs}) == len(specs)
    assert specs[0].export["decoder_graph"] == csm_spec(model, "decoder", "w" * 16, 1).key()
    assert specs[0].facts["codebooks"] == model.args.num_codebooks and specs[0].facts["vocab"] == 2051
    fewer = SimpleNamespace(args=dataclasses.replace(model.args, num_codebooks=16))
    assert frame_spec(fewer, "w" * 16, 1).key() != specs[0].key()


def test_the_frame_graph_is_cached_and_reused(fused_engines, onnx_cache):
    from ort_helpers import make_context

    from csm_onnxruntime.engines import OnnxCsmEngines

    model, _, engines, _ = fused_engines("tiny")
    context = make_context(onnx_cache)
    again = OnnxCsmEngines(model, context, fused_frame=True)
    assert again.artifacts[-1].path == engines.artifacts[-1].path and not again.artifacts[-1].built
    assert not any("exporting" in e or "rebuilding" in e for e in context.events), context.events


def test_the_option_is_read_from_the_config_and_must_be_a_boolean(preset_models, onnx_cache):
    from ort_helpers import make_context

    from csm_onnxruntime.engines import OnnxCsmEngines
    from csm_onnxruntime.session import SessionOptions

    model, _ = preset_models.csm("tiny")
    with pytest.raises(ConfigError, match=r"options\.onnxruntime\.fused_frame='yes': must be true or false"):
        OnnxCsmEngines(model, make_context(onnx_cache, options={"onnxruntime": {"fused_frame": "yes"}}))
    on = OnnxCsmEngines(model, make_context(onnx_cache, options={"onnxruntime": {"fused_frame": True}}))
    assert on.frame_decoder is not None and OnnxCsmEngines(model, make_context(onnx_cache)).frame_decoder is None
    assert SessionOptions.from_options({"fused_frame": True}) == SessionOptions()
    with pytest.raises(ConfigError, match="unknown option; known: .*fused_frame"):
        SessionOptions.from_options({"fused_frames": True})


def test_a_graph_that_is_not_a_decoder_graph_is_refused():
    from onnx import TensorProto, helper

    from csm_export.frame_graph import build_frame_graph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "toy", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ValueError, match="expected.*inputs_embeds.*csm_decoder graph of 2 layers"):
        build_frame_graph(helper.make_model(graph), num_codebooks=32, vocab=2051, layers=2, batch_size=1)
