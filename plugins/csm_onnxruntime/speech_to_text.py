"""The ``speech_to_text`` engine of the onnxruntime backend: Whisper as three exported graphs.

The graphs (:mod:`csm_export.whisper_export`: encoder, cross-attention keys/values, decoder with a static
self-attention cache) are exported on first use into the artifact cache (keyed by the weights hash,
graph, exporter, opset, dtype and cache size; checksummed; rebuilt with a message when stale or corrupt)
and opened with :func:`csm_onnxruntime.engines._open_graph` (explicit providers, the CUDA check,
``[options.onnxruntime]``). They run with IO binding: :meth:`OnnxSpeechToText.reset` fills the
cross-attention buffers once per window, and the decoder runs over ping-pong self-attention caches, as
the ``causal_lm`` engine does (:class:`csm_onnxruntime.token_decoder.TokenDecoder`).
"""

from __future__ import annotations

import torch

from csm_core.components import SpeechToText
from csm_core.generation.token_steps import TokenSteps
from csm_core.records import StageContext
from csm_export.artifacts import weights_hash
from csm_export.specs import whisper_spec
from csm_export.whisper_export import (
    WHISPER_GRAPHS,
    cross_names,
    cross_shape,
    export_whisper_graph,
    feature_frames,
    self_cache_shape,
)
from csm_onnxruntime.engines import _open_graph, requested_device
from csm_onnxruntime.io_binding import bind_tensor
from csm_onnxruntime.token_decoder import TokenDecoder

RUNNABLE_DTYPES = (torch.float32, torch.float16)  # the graphs' float types


def check_component(component: SpeechToText) -> int:
    model = component.model
    if getattr(model.config, "model_type", None) != "whisper":
        raise ValueError(f"onnxruntime speech_to_text exports Whisper models, not {model.config.model_type!r}")
    dtype = next(model.parameters()).dtype
    if dtype not in RUNNABLE_DTYPES:
        raise ValueError(
            f"onnxruntime speech_to_text: the model is in {dtype}; the graphs run in float32 or float16: "
            "set component_precision.transcriber = \"fp16\" or \"fp32\""
        )
    limit = model.config.max_target_positions
    if not 1 <= component.max_target_positions <= limit:
        raise ValueError(f"max_target_positions={component.max_target_positions}: must be in 1..{limit}")
    return component.max_target_positions


class OnnxSpeechToText(TokenSteps):
    """:class:`~csm_core.components.SpeechToTextEngine` over the exported Whisper graphs."""

    def __init__(self, component: SpeechToText, context: StageContext) -> None:
        model = component.model
        self.max_positions = check_component(component)
        self.dtype = next(model.parameters()).dtype
        device = requested_device(context, model)
        whash = weights_hash(model)
        self.sessions, self.artifacts, used = {}, [], device
        for graph in WHISPER_GRAPHS:
            spec = whisper_spec(model, graph, self.max_positions, whash)
            build = lambda path, graph=graph: export_whisper_graph(model, graph, path, self.max_positions)  # noqa: E731
            self.sessions[graph], used, artifact = _open_graph(context, spec, build, device)
            self.artifacts.append(artifact)
        self.device = torch.device(used if used.startswith("cuda") else "cpu")
        config = model.config
        self.frames = feature_frames(model)
        self.mel_bins = config.num_mel_bins
        self.hidden_shape = (1, config.max_source_positions, config.d_model)
        layers = config.decoder_layers
        self.decoder = TokenDecoder(self.sessions["whisper_decoder"], layers, self_cache_shape(model, self.max_positions),
                                    self.dtype, self.device, config.vocab_size,
                                    fixed=dict.fromkeys(cross_names(layers), cross_shape(model)))
        self._ready = False
        self.position = 0

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape) != (1, self.mel_bins, self.frames):
            raise ValueError(
                f"speech_to_text: features must be [1, {self.mel_bins}, {self.frames}] (one padded window), "
                f"got {tuple(features.shape)}"
            )
        features = features.to(self.device, self.dtype).contiguous()
        hidden = torch.empty(self.hidden_shape, dtype=self.dtype, device=self.device)
        session = self.sessions["whisper_encoder"]
        binding = session.io_binding()
        bind_tensor(binding, "input_features", features)
        bind_tensor(binding, "encoder_hidden_states", hidden, output=True)
        session.run_with_iobinding(binding)
        return hidden

    def reset(self, encoder_hidden: torch.Tensor) -> None:
        hidden = encoder_hidden.to(self.device, self.dtype).contiguous()
        if tuple(hidden.shape) != self.hidden_shape:
            raise ValueError(f"speech_to_text: encoder_hidden must be {list(self.hidden_shape)}, got {list(hidden.shape)}")
        session = self.sessions["whisper_cross_kv"]
        binding = session.io_binding()
        bind_tensor(binding, "encoder_hidden_states", hidden)
        for name, tensor in self.decoder.fixed.items():
            bind_tensor(binding, name, tensor, output=True)
        session.run_with_iobinding(binding)
        self.decoder.restart()
        self._ready = True
        self.position = 0

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise ValueError("speech_to_text: call reset(encoder_hidden) before prefill or step")
        logits = self.decoder.run(input_ids, self.position)
        self.position += input_ids.shape[1]
        return logits
