"""The TensorRT ``causal_lm`` and ``speech_to_text`` engines are built from ONNX Runtime's graphs: the same
specs (one function in ``csm_export.specs``), so one cached file serves both backends, and optimization
profiles that cover the exported graphs' inputs. No TensorRT needed: the graphs are exported for real
(the tiny random Llama of ``tests/conftest.py`` and the tiny random Whisper of ``csm_listen.tiny_models``)
through the TensorRT backend's own export path; the engine build itself is in ``test_listen_engines_gpu.py``."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from csm_core.components import CausalLm, SpeechToText  # noqa: E402
from csm_export.artifacts import weights_hash  # noqa: E402
from csm_tensorrt import profiles as P  # noqa: E402
from csm_tensorrt.builder import check_profile  # noqa: E402

pytestmark = pytest.mark.slow  # exports the tiny LM graph and the three tiny Whisper graphs (~20 s on 2 cores)

LM_POSITIONS = 128


def context_for(cache_dir, **settings):
    from csm_core.config import Settings
    from csm_core.records import StageContext

    settings = Settings(backend="onnxruntime", device="cpu", cache_dir=cache_dir, **settings)
    return StageContext(stage="llm", settings=settings, registry=None, log=logging.getLogger("csm.test"))


def network_inputs(shapes) -> dict:
    """The inputs as TensorRT's parser shows them: -1 for every dynamic axis."""
    return {name: tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims) for name, dims in shapes.items()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-listen-cache")


@pytest.fixture(scope="module")
def lm_graph(lm, cache_dir):
    """(source Artifact, spec, context) of the tiny LM's graph, exported by the TensorRT backend's path."""
    from csm_tensorrt.causal_lm import causal_lm_graph

    context = context_for(cache_dir)
    source, spec = causal_lm_graph(CausalLm(lm, LM_POSITIONS), context)
    return source, spec, context


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    from csm_listen.tiny_models import write_tiny_whisper

    return WhisperForConditionalGeneration.from_pretrained(write_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))).eval()


@pytest.fixture(scope="module")
def whisper_graphs(whisper, cache_dir):
    """({graph: (source Artifact, spec)}, context) of the tiny Whisper, exported by the TensorRT backend's path."""
    from csm_tensorrt.speech_to_text import whisper_graphs

    context = context_for(cache_dir)
    return whisper_graphs(SpeechToText(whisper, whisper.config.max_target_positions), context), context


def test_both_backends_key_the_causal_lm_graph_with_one_spec_function(lm, lm_graph):
    import csm_onnxruntime.causal_lm as ort_module
    from csm_export.specs import causal_lm_spec

    source, spec, context = lm_graph
    assert ort_module.causal_lm_spec is causal_lm_spec  # ONNX Runtime's engine builds from the shared function
    ours = causal_lm_spec(lm, LM_POSITIONS, weights_hash(lm))
    assert spec == ours and source.path.name == ours.filename()
    assert spec.export["dtype"] == "float32" and spec.facts["cache_size"] == LM_POSITIONS
    assert source.built and any("exporting causal_lm" in event for event in context.events)


def test_onnxruntime_reuses_the_causal_lm_graph_exported_for_tensorrt(lm, lm_graph, cache_dir):
    from csm_onnxruntime.causal_lm import OnnxCausalLm

    source, _, _ = lm_graph
    context = context_for(cache_dir)
    engine = OnnxCausalLm(CausalLm(lm, LM_POSITIONS), context)
    assert not engine.artifact.built and engine.artifact.path == source.path
    assert not [e for e in context.events if "exporting" in e or "rebuilding" in e]


def test_a_half_precision_lm_is_keyed_by_its_float32_graph(lm):
    """TensorRT exports float32 and lowers precision itself (the plan of ``llm``), as for CSM."""
    import copy

    import torch

    from csm_export.specs import causal_lm_spec
    from csm_tensorrt.artifacts import _fp32

    widened = _fp32(copy.deepcopy(lm).to(torch.float16))
    assert next(widened.parameters()).dtype == torch.float32
    assert causal_lm_spec(widened, LM_POSITIONS, weights_hash(widened)).export["dtype"] == "float32"


def test_the_causal_lm_profile_covers_one_token_to_the_whole_cache(lm, lm_graph):
    from csm_export.lm_export import lm_cache_shape

    source, _, _ = lm_graph
    shapes = P.onnx_input_shapes(source.path)
    assert set(shapes) == {"input_ids", "position_ids", *(f"past_key_values.{i}.{kind}" for i in range(2)
                                                           for kind in ("key", "value"))}
    ranges = P.axis_ranges(P.CAUSAL_LM, P.TrtOptions(), max_seq_len=LM_POSITIONS)
    profiles = P.profile_shapes(P.CAUSAL_LM, shapes, ranges)
    # min: a one-token step; opt: the step (once per generated token); max: a prompt filling the cache
    assert profiles == {"input_ids": ((1, 1), (1, 1), (1, LM_POSITIONS)),
                        "position_ids": ((1, 1), (1, 1), (1, LM_POSITIONS))}
    for name, dims in shapes.items():
        if name.startswith("past_key_values."):
            assert dims == lm_cache_shape(lm, LM_POSITIONS)  # static: bound as they are, no profile entry
    check_profile(network_inputs(shapes), profiles, source.path.name)  # what build_engine checks before building


def test_both_backends_key_the_whisper_graphs_with_one_spec_function(whisper, whisper_graphs):
    import csm_onnxruntime.speech_to_text as ort_module
    from csm_export.specs import whisper_spec

    graphs, context = whisper_graphs
    assert ort_module.whisper_spec is whisper_spec
    assert tuple(graphs) == P.WHISPER_COMPONENTS
    whash = weights_hash(whisper)
    for graph, (source, spec) in graphs.items():
        ours = whisper_spec(whisper, graph, whisper.config.max_target_positions, whash)
        assert spec == ours and source.path.name == ours.filename() and source.built
        assert spec.export["dtype"] == "float32"
    assert graphs[P.WHISPER_DECODER][1].facts["cache_size"] == whisper.config.max_target_positions
    assert sum("exporting whisper_" in event for event in context.events) == 3


def test_onnxruntime_reuses_the_whisper_graphs_exported_for_tensorrt(whisper, whisper_graphs, cache_dir):
    from csm_onnxruntime.speech_to_text import OnnxSpeechToText

    graphs, _ = whisper_graphs
    context = context_for(cache_dir)
    engine = OnnxSpeechToText(SpeechToText(whisper, whisper.config.max_target_positions), context)
    assert [a.path for a in engine.artifacts] == [source.path for source, _ in graphs.values()]
    assert not any(a.built for a in engine.artifacts)
    assert not [e for e in context.events if "exporting" in e or "rebuilding" in e]


def test_the_whisper_profiles_cover_the_exported_graphs(whisper, whisper_graphs):
    from csm_export.whisper_export import cross_names, cross_shape, feature_frames, self_cache_shape

    graphs, _ = whisper_graphs
    positions = whisper.config.max_target_positions
    profiles = {}
    for graph, (source, _) in graphs.items():
        shapes = P.onnx_input_shapes(source.path)
        profiles[graph] = P.profile_shapes(graph, shapes, P.axis_ranges(graph, P.TrtOptions(), max_seq_len=positions))
        check_profile(network_inputs(shapes), profiles[graph], source.path.name)
        if graph == P.WHISPER_ENCODER:
            assert shapes == {"input_features": (1, whisper.config.num_mel_bins, feature_frames(whisper))}
        elif graph == P.WHISPER_DECODER:
            assert {n: shapes[n] for n in cross_names(1)} == {n: cross_shape(whisper) for n in cross_names(1)}
            assert shapes["past_key_values.0.key"] == self_cache_shape(whisper, positions)
    # one 30 s window: the encoder and cross-attention graphs are static, no profile entries
    assert profiles[P.WHISPER_ENCODER] == {} and profiles[P.WHISPER_CROSS_KV] == {}
    # the forced prompt (up to 4 tokens) or one token per step, up to the decoder's positions
    assert profiles[P.WHISPER_DECODER] == {"input_ids": ((1, 1), (1, 1), (1, positions)),
                                           "position_ids": ((1, 1), (1, 1), (1, positions))}


def test_a_reduced_precision_plan_types_the_buffers_the_engines_share(lm_graph, whisper_graphs, tmp_path):
    """fp16 plans of ``llm`` and ``transcriber``: the caches and Whisper's cross-attention keys/values are
    fp16 on both sides (what one engine writes, the next reads as it is), logits and encoder states fp32."""
    import onnx
    from onnx import TensorProto

    from csm_tensorrt.artifacts import typed_graph
    from csm_tensorrt.precision import plan_for
    from csm_tensorrt.speech_to_text import whisper_plan

    half = context_for(tmp_path, component_precision={"llm": "fp16", "transcriber": "fp16"}).settings

    def io_types(source, spec, plan):
        typed = typed_graph(source, spec, plan, tmp_path / "graphs", print)
        graph = onnx.load(str(typed.path), load_external_data=False).graph
        return ({v.name: v.type.tensor_type.elem_type for v in graph.input},
                {v.name: v.type.tensor_type.elem_type for v in graph.output})

    source, spec, _ = lm_graph
    inputs, outputs = io_types(source, spec, plan_for(half, "llm"))
    assert inputs["input_ids"] == inputs["position_ids"] == TensorProto.INT64
    assert {inputs[n] for n in inputs if n.startswith("past_key_values.")} == {TensorProto.FLOAT16}
    assert {outputs[n] for n in outputs if n.startswith("present.")} == {TensorProto.FLOAT16}
    assert outputs["logits"] == TensorProto.FLOAT

    graphs, _ = whisper_graphs
    plan = whisper_plan(half)
    types = {graph: io_types(source, spec, plan) for graph, (source, spec) in graphs.items()}
    encoder_out, (cross_in, cross_out), (decoder_in, decoder_out) = (
        types[P.WHISPER_ENCODER][1], types[P.WHISPER_CROSS_KV], types[P.WHISPER_DECODER])
    assert encoder_out["encoder_hidden_states"] == cross_in["encoder_hidden_states"] == TensorProto.FLOAT
    assert set(cross_out.values()) == {TensorProto.FLOAT16}
    assert {n: decoder_in[n] for n in cross_out} == cross_out
    assert decoder_out["logits"] == TensorProto.FLOAT
    assert {decoder_in[n] for n in decoder_in if n.startswith("past_key_values.")} == {TensorProto.FLOAT16}
