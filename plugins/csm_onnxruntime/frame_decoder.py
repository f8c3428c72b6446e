"""The fused frame decoder of the onnxruntime backend: one ONNX Runtime call per frame.

:class:`OnnxFrameDecoder` is a :class:`csm_core.components.FrameEngine` over the frame graph of
:mod:`csm_export.frame_graph` (the decoder graph inlined K-1 times, its KV cache inside the graph, the
core's sampling as graph ops). Switched on by ``[options.onnxruntime] fused_frame = true`` (the
``fused-frame`` optimizer sets it); ``csmctl export`` builds the graph whatever the option says.

A frame is decoded as :func:`csm_core.generation.frames.decode_frame` decodes it: codebook 0 with the
core's :func:`~csm_core.generation.sampling.sample` (its noise drawn first), then one
:func:`~csm_core.generation.sampling.draw_noise` [B,V'] per codebook 1..K-1, in order, from the same
generator, handed to the graph, which returns codebooks 1..K-1. Greedy draws no noise (the graph gets
ones it does not read).

Exactness (docs/optimizers.md, ``fused-frame``): the graph runs the step path's own decoder graph, and
its sampling ops are the core's except that ONNX Runtime's ``Softmax``/``CumSum`` round their last bits
differently from torch's. Parameters the graph cannot reproduce exactly (a temperature that is positive
but 0 in float32) are not supported: :meth:`~OnnxFrameDecoder.supports` says so, reports it, and the frame
loop decodes those frames step by step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from csm_core.config import Settings
from csm_core.errors import ConfigError
from csm_core.generation.sampling import SamplingParams, draw_noise, sample
from csm_export.frame_graph import OUTPUT, build_frame_graph, frame_spec
from csm_onnxruntime import FUSED_FRAME_OPTION
from csm_onnxruntime.engines import EXTERNAL_DATA_BYTES, cache_dir, requested_device
from csm_onnxruntime.io_binding import bind_tensor
from csm_onnxruntime.session import SessionOptions, create_session, require_provider

def fused_frame_enabled(settings: Settings) -> bool:
    """``[options.onnxruntime] fused_frame`` (default false); anything but a boolean is a ConfigError."""
    value = (settings.options.get("onnxruntime") or {}).get(FUSED_FRAME_OPTION, False)
    if not isinstance(value, bool):
        raise ConfigError(f"options.onnxruntime.{FUSED_FRAME_OPTION}={value!r}: must be true or false")
    return value


def unsupported_reason(params: SamplingParams) -> str | None:
    """Why the frame graph cannot give the core's codes under ``params``, or None when it can."""
    if params.temperature > 0 and np.float32(params.temperature) == 0:
        return (f"temperature={params.temperature!r} is 0 in float32, the graph's dtype, but not greedy for the core "
                "(which divides by it)")
    return None


class OnnxFrameDecoder:
    """:class:`~csm_core.components.FrameEngine`: a frame's codebooks 1..K-1 in one run of the frame graph."""

    def __init__(self, session, table: torch.Tensor, num_codebooks: int, vocab: int, batch_size: int,
                 report) -> None:
        """``table`` is the audio embedding table [K*V,D] float32, contiguous, on the device the session
        runs on (bound without a copy); ``report`` receives why a :meth:`supports` call said no."""
        self.session = session
        self.table = table
        self.num_codebooks = num_codebooks
        self.vocab = vocab
        self.batch_size = batch_size
        self.report = report
        self._ones: dict[tuple, torch.Tensor] = {}
        self._refused: set[SamplingParams] = set()

    def supports(self, params: SamplingParams) -> bool:
        """True unless :func:`unsupported_reason`; a refusal is reported once per parameters."""
        reason = unsupported_reason(params)
        if reason is not None and params not in self._refused:
            self._refused.add(params)
            self.report(f"onnxruntime: the fused frame graph cannot serve {reason}; these frames are decoded step by step")
        return reason is None

    def _scalar(self, value, dtype) -> torch.Tensor:
        return torch.tensor(value, dtype=dtype, device=self.table.device)

    def _noise(self, params: SamplingParams, rows: int, codes: int, device, generator) -> torch.Tensor:
        """[K-1,B,V'] noise: the core's draws in order, or (greedy) cached ones the graph does not read."""
        shape = (self.num_codebooks - 1, rows, codes)
        if params.greedy:
            key = (shape, str(device))
            if key not in self._ones:
                self._ones[key] = torch.ones(shape, dtype=torch.float32, device=device)
            return self._ones[key]
        return torch.stack([draw_noise((rows, codes), device, generator) for _ in range(shape[0])])

    @torch.inference_mode()
    def decode(self, hidden: torch.Tensor, c0_logits: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes [B,K] of one frame (see the module docstring)."""
        reason = unsupported_reason(params)
        if reason is not None:
            raise ValueError(f"OnnxFrameDecoder cannot decode this frame: {reason}; check supports(params) first")
        rows = hidden.shape[0]
        if rows != self.batch_size or c0_logits.shape != (rows, self.vocab):
            raise ValueError(
                f"fused frame graph: hidden {tuple(hidden.shape)} / c0_logits {tuple(c0_logits.shape)} must be "
                f"[{self.batch_size}, D] / [{self.batch_size}, {self.vocab}] (the batch size the graph was exported for)"
            )
        c0 = sample(c0_logits, params, generator)  # the core's choice of codebook 0, its noise drawn first
        codes = min(params.code_limit or self.vocab, self.vocab)  # V': the codes a draw covers
        device = self.table.device
        inputs = {
            "hidden_states": hidden.to(device, torch.float32).contiguous(),
            "codebook0": c0.to(device, torch.int64).contiguous(),
            "audio_embeddings": self.table,
            "temperature": self._scalar(params.temperature, torch.float32),
            "top_k": self._scalar(params.top_k or self.vocab, torch.int64),
            "top_p": self._scalar(1.0 if params.top_p is None else params.top_p, torch.float32),
            "code_limit": self._scalar(codes, torch.int64),
            "noise": self._noise(params, rows, codes, c0_logits.device, generator).to(device),
        }
        out = torch.empty(rows, self.num_codebooks - 1, dtype=torch.int64, device=device)
        binding = self.session.io_binding()
        for name, tensor in inputs.items():
            bind_tensor(binding, name, tensor)
        bind_tensor(binding, OUTPUT, out, output=True)
        self.session.run_with_iobinding(binding)
        return torch.cat((c0.unsqueeze(1).to(out.device), out), dim=1)


def _build(decoder_path: Path, model, batch_size: int):
    """``build(path)`` for :func:`csm_export.artifacts.ensure_artifact`: the frame graph over the cached
    decoder graph at ``decoder_path`` (weights past protobuf's limit go to a data file beside it)."""

    def build(path: Path) -> None:
        import onnx

        a = model.args
        decoder = onnx.load_model(str(decoder_path))  # with its external data, if any
        graph = build_frame_graph(decoder, num_codebooks=a.num_codebooks, vocab=a.audio_vocab_size,
                                  layers=a.decoder_layers, batch_size=batch_size)
        weights = sum(len(t.raw_data) for t in graph.graph.initializer)
        onnx.save_model(graph, str(path), save_as_external_data=weights > EXTERNAL_DATA_BYTES,
                        all_tensors_to_one_file=True, location=f"{path.name}.data")

    return build


def open_frame_decoder(model, context, decoder_artifact, whash: str, plan, batch_size: int):
    """(OnnxFrameDecoder, its artifact): the frame graph of ``model`` built from ``decoder_artifact`` (the
    cached decoder graph typed by ``plan``) through the artifact cache, and its session.

    The session runs with ORT's memory-reuse planning off (:class:`SessionOptions.memory_reuse`): with
    it, opening the graph takes seconds more (8 s for tiny's) and a frame runs about as fast (docs/optimizers.md).
    """
    from csm_export.artifacts import ensure_artifact

    device = requested_device(context, model)
    require_provider("the frame graph", device, allow_fallback=context.settings.allow_fallback)
    spec = frame_spec(model, whash, batch_size, plan)
    artifact = ensure_artifact(cache_dir(context), spec, _build(decoder_artifact.path, model, batch_size), context.report)
    options = replace(SessionOptions.from_options(context.settings.options.get("onnxruntime")), memory_reuse=False)
    session, used = create_session(artifact.path, artifact.sha256, device, options,
                                   allow_fallback=context.settings.allow_fallback, report=context.report)
    tensor_device = torch.device(used if used.startswith("cuda") else "cpu")
    table = model.audio_embeddings.weight.detach().to(tensor_device, torch.float32).contiguous()
    a = model.args
    frame = OnnxFrameDecoder(session, table, a.num_codebooks, a.audio_vocab_size, batch_size, context.report)
    return frame, artifact
