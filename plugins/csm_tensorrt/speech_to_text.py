"""The ``speech_to_text`` engine of the tensorrt backend: Whisper as three TensorRT engines.

Built from the three graphs ONNX Runtime runs (:mod:`csm_export.whisper_export`): ``whisper_encoder``
(log-mel features -> encoder states, once per 30 s window), ``whisper_cross_kv`` (every decoder layer's
cross-attention keys and values, once per window) and ``whisper_decoder`` (tokens over a static
self-attention cache of ``max_target_positions``), found in or exported to the shared artifact cache under
the specs ONNX Runtime keys them by (:func:`csm_export.specs.whisper_spec`). The graphs are exported in
float32 and typed by the TensorRT precision plan (``component_precision.transcriber``, else ``precision``);
the cross-attention keys and values take the reduced dtype like the caches, so the buffers the
cross-attention engine writes are the decoder engine's inputs as they are. The encoder and
cross-attention engines have static shapes; the decoder takes 1..max_target_positions tokens per call,
tuned for one. The greedy token loop is the core's (:mod:`csm_core.generation.speech_decoding`).
"""

from __future__ import annotations

import torch

from csm_core.components import SpeechToText
from csm_core.generation.token_steps import TokenSteps
from csm_core.records import StageContext

from . import profiles as P
from .runtime import TrtRunner, TrtRuntimeError
from .token_decoder import TokenDecoder

CROSS_PREFIX = "cross."  # the cross-attention keys/values: csm_export.whisper_export.cross_names


def whisper_plan(settings):
    """The precision plan of the three Whisper graphs: the transcriber's precision, with the
    cross-attention keys and values (outputs of one graph, inputs of the next) typed like the caches."""
    from dataclasses import replace

    from .precision import plan_for

    plan = plan_for(settings, "transcriber")
    return replace(plan, low_io_prefixes=(*plan.low_io_prefixes, CROSS_PREFIX))


def check_whisper(component: SpeechToText) -> int:
    """``component.max_target_positions`` when ``component.model`` is a Whisper and it fits the model's
    decoder positions; else a ``ValueError`` naming the value and the limit."""
    config = component.model.config
    if getattr(config, "model_type", None) != "whisper":
        raise ValueError(
            f"tensorrt speech_to_text builds Whisper models, not {getattr(config, 'model_type', None)!r}: "
            "run the transcriber on pytorch (backends.transcriber = \"pytorch\")"
        )
    limit = config.max_target_positions
    if not 1 <= component.max_target_positions <= limit:
        raise ValueError(f"max_target_positions={component.max_target_positions}: must be in 1..{limit}")
    return component.max_target_positions


class TrtSpeechToText(TokenSteps):
    """:class:`~csm_core.components.SpeechToTextEngine` over the encoder, cross-attention and decoder engines."""

    def __init__(self, encoder: TrtRunner, cross_kv: TrtRunner, decoder: TokenDecoder, max_positions: int) -> None:
        for runner, inputs, outputs in ((encoder, ["input_features"], ["encoder_hidden_states"]),
                                        (cross_kv, ["encoder_hidden_states"], sorted(decoder.fixed))):
            if runner.inputs != inputs or sorted(runner.outputs) != sorted(outputs):
                raise TrtRuntimeError(
                    f"{runner.name}: the engine takes {runner.inputs} and gives {runner.outputs}, expected {inputs} "
                    f"and {outputs}: delete it from the cache to rebuild"
                )
        for name, buffer in decoder.fixed.items():
            spec = cross_kv.specs[name]
            if (spec.shape, spec.dtype) != (tuple(buffer.shape), buffer.dtype):
                raise TrtRuntimeError(
                    f"{cross_kv.name} writes {name!r} as {spec.dtype} {spec.shape}, but {decoder.runner.name} reads "
                    f"{buffer.dtype} {tuple(buffer.shape)}: build both from graphs typed by one precision plan"
                )
        if decoder.cache_positions != max_positions:
            raise ValueError(f"tensorrt speech_to_text: the decoder's cache holds {decoder.cache_positions} positions, "
                             f"max_target_positions is {max_positions}")
        self.encoder, self.cross_kv, self.decoder = encoder, cross_kv, decoder
        self.features_shape = encoder.specs["input_features"].shape
        self.hidden_shape = cross_kv.specs["encoder_hidden_states"].shape
        self.max_positions = max_positions
        self.device = decoder.runner.device
        self.position = 0
        self._ready = False

    @torch.inference_mode()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape) != self.features_shape:
            raise ValueError(
                f"speech_to_text: features must be {list(self.features_shape)} (one padded window), "
                f"got {list(features.shape)}"
            )
        return self.encoder.run({"input_features": features})["encoder_hidden_states"]

    @torch.inference_mode()
    def reset(self, encoder_hidden: torch.Tensor) -> None:
        if tuple(encoder_hidden.shape) != self.hidden_shape:
            raise ValueError(f"speech_to_text: encoder_hidden must be {list(self.hidden_shape)}, got {list(encoder_hidden.shape)}")
        self.cross_kv.run({"encoder_hidden_states": encoder_hidden}, self.decoder.fixed)
        self.decoder.restart()
        self.position = 0
        self._ready = True

    @torch.inference_mode()
    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise ValueError("speech_to_text: call reset(encoder_hidden) before prefill or step")
        logits = self.decoder.run(input_ids, self.position)
        self.position += input_ids.shape[1]
        return logits


def whisper_graphs(component: SpeechToText, context: StageContext) -> dict:
    """{graph: (source, spec)} for the three Whisper graphs of ``component``: each shared float32 graph (an
    :class:`~csm_export.artifacts.Artifact`, exported when missing or damaged) and the spec that keys it,
    :func:`csm_export.specs.whisper_spec` of the float32 model, as ONNX Runtime keys a float32 model's."""
    from csm_export.artifacts import weights_hash
    from csm_export.specs import whisper_spec
    from csm_export.whisper_export import export_whisper_graph

    from .artifacts import _fp32, onnx_artifact

    max_positions = check_whisper(component)
    model = _fp32(component.model)
    whash = weights_hash(model)
    graphs = {}
    for graph in P.WHISPER_COMPONENTS:
        spec = whisper_spec(model, graph, max_positions, whash)
        build = lambda path, g=graph: export_whisper_graph(model, g, path, max_positions)  # noqa: E731
        graphs[graph] = (onnx_artifact(context, spec, build), spec)
    return graphs


def speech_to_text_engine(component: SpeechToText, context: StageContext, progress=None) -> TrtSpeechToText:
    """:class:`TrtSpeechToText` for ``component`` (a transformers Whisper and its decoder positions): the
    shared ONNX graphs (:func:`whisper_graphs`), typed by :func:`whisper_plan`, and the engines built from
    them when missing, stale or damaged (all cached)."""
    from csm_export.whisper_export import cross_names

    from .artifacts import engine_for

    options = P.TrtOptions.from_settings(context.settings)  # config errors before any export
    plan = whisper_plan(context.settings)
    total = len(P.WHISPER_COMPONENTS)
    if progress:
        progress("tensorrt: whisper graphs", 0, total)
    graphs = whisper_graphs(component, context)
    max_positions = component.max_target_positions
    device = torch.device("cuda", torch.cuda.current_device())
    runners = {}
    for done, (graph, (source, spec)) in enumerate(graphs.items()):
        if progress:
            progress(f"tensorrt: {graph}", done, total)
        ranges = P.axis_ranges(graph, options, max_seq_len=max_positions)
        runners[graph] = TrtRunner(engine_for(context, graph, source, spec, plan, options, ranges), device, graph)
    if progress:
        progress("tensorrt: speech_to_text engines ready", total, total)
    decoder = TokenDecoder(runners[P.WHISPER_DECODER], fixed=cross_names(component.model.config.decoder_layers),
                           cuda_graphs=options.cuda_graphs)
    return TrtSpeechToText(runners[P.WHISPER_ENCODER], runners[P.WHISPER_CROSS_KV], decoder, max_positions)
