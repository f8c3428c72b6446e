"""Engines of the onnxruntime backend (:mod:`csm_core.components` interfaces) over exported graphs.

The CSM engines run with IO binding: inputs, outputs and the key/value caches are torch tensors whose
data pointers are bound directly, so nothing is copied to the host per step. Each cache exists twice
(ping-pong): a call reads ``past`` from one set and writes ``present`` into the other, then they swap.

Precision: the graphs are exported in float32 and typed by the precision plan of their part
(``backbone`` for the two backbone graphs, ``decoder`` for the decoder graph;
:func:`csm_export.precision.plan_for`) before they are cached, so the plan is part of the cache key.
Inputs (``inputs_embeds``) and outputs (``hidden_states``, ``logits``) stay float32; the KV caches take
the plan's dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from csm_core.errors import CsmError
from csm_core.records import StageContext
from csm_export.artifacts import ArtifactSpec, ensure_artifact, weights_hash
from csm_export.export import EXPORTER, OPSET, csm_cache_shape, export_csm_part, export_mimi_decoder_step
from csm_export.precision import PrecisionPlan, convert_graph, plan_for
from csm_export.specs import CSM_GRAPHS, csm_spec, graph_part
from csm_onnxruntime.io_binding import CacheBuffers, bind_tensor
from csm_onnxruntime.session import SessionOptions, create_session, require_provider

EXTERNAL_DATA_BYTES = 1_800_000_000  # typed graphs with more weight bytes than this keep them in a .data file
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cache_dir(context: StageContext) -> Path:
    return context.settings.resolved_cache_dir() / "onnx"


def requested_device(context: StageContext, module) -> str:
    """``cuda``/``cuda:N`` when the config asks for it, else the device the module's weights are on."""
    wanted = context.settings.device
    if wanted.startswith("cuda"):
        return wanted
    return str(next(module.parameters()).device.type)


def _open_graph(context, spec: ArtifactSpec, build, device: str, plan: PrecisionPlan | None = None):
    require_provider(f"the {spec.component} graph", device, allow_fallback=context.settings.allow_fallback)  # before any export
    artifact = ensure_artifact(cache_dir(context), spec, build, context.report)
    options = SessionOptions.from_options(context.settings.options.get("onnxruntime"))
    try:
        session, used = create_session(
            artifact.path, artifact.sha256, device, options,
            allow_fallback=context.settings.allow_fallback, report=context.report,
        )
    except Exception as exc:  # noqa: BLE001 - only a reduced-precision plan is explained here
        if plan is None or plan.dtype == "fp32" or "NOT_IMPLEMENTED" not in str(exc):
            raise
        provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        first_line = str(exc).strip().splitlines()[0][:300]
        raise CsmError(
            f"onnxruntime's {provider} cannot run the {plan.dtype} graph {artifact.path.name} ({first_line}). "
            f"Set component_precision for this part to a precision it runs (fp32 runs everywhere; fp16 runs on "
            f"the CPU provider, bf16 needs CUDA), or use device = \"cuda\""
        ) from None
    return session, used, artifact


def _typed_export(export, plan: PrecisionPlan):
    """A ``build(path)`` that exports with ``export(path)`` and then types the graph by ``plan``."""

    def build(path: Path) -> None:
        export(path)
        if plan.changes_graph:  # a reduced dtype or quantized weights (weight_quantization)
            import onnx

            typed = convert_graph(onnx.load_model(str(path)), plan)
            weights = sum(len(t.raw_data) for t in typed.graph.initializer)
            # Past protobuf's 2 GB limit the weights go to an external data file beside the graph.
            onnx.save_model(typed, str(path), save_as_external_data=weights > EXTERNAL_DATA_BYTES,
                            all_tensors_to_one_file=True, location=f"{path.name}.data")

    return build


class _CachedGraphs:
    """Sessions sharing one ping-pong pair of KV-cache buffer sets, run with IO binding."""

    def __init__(self, sessions: dict, layers: int, shape, cache_dtype, device, batch_size: int, outputs: dict[str, int]):
        """``cache_dtype``: the KV caches' dtype (the plan's); inputs and outputs are float32."""
        self.sessions = sessions
        self.caches = CacheBuffers(layers, shape, cache_dtype, device)
        self.batch_size = batch_size
        self.dtype, self.device = torch.float32, device  # of inputs_embeds and the outputs
        self.outputs = outputs  # output name -> last dim

    def reset(self) -> None:
        self.caches.zero()

    def run(self, graph: str, x: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 3 or x.shape[0] != self.batch_size or positions.shape != x.shape[:2]:
            raise ValueError(
                f"onnxruntime engine: inputs_embeds {tuple(x.shape)} / position_ids {tuple(positions.shape)} must be "
                f"[{self.batch_size}, T, D] / [{self.batch_size}, T] (the batch size the graphs were exported for)"
            )
        x = x.to(self.device, self.dtype).contiguous()
        positions = positions.to(self.device, torch.int64).contiguous()
        session = self.sessions[graph]
        binding = session.io_binding()
        bind_tensor(binding, "inputs_embeds", x)
        bind_tensor(binding, "position_ids", positions)
        self.caches.bind(binding)
        results = []
        for name, width in self.outputs.items():
            out = torch.empty(self.batch_size, width, dtype=self.dtype, device=self.device)
            bind_tensor(binding, name, out, output=True)
            results.append(out)
        session.run_with_iobinding(binding)
        self.caches.swap()
        return results


class OnnxBackbone:
    """:class:`~csm_core.components.BackboneEngine`: ``backbone_prefill`` (dynamic T) and ``backbone_step`` (T=1)."""

    def __init__(self, graphs: _CachedGraphs, max_positions: int) -> None:
        self.graphs = graphs
        self.max_positions = max_positions

    def reset(self) -> None:
        self.graphs.reset()

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor):
        hidden, logits = self.graphs.run("backbone_prefill", embeds, positions)
        return hidden, logits

    def step(self, embed: torch.Tensor, position: torch.Tensor):
        graph = "backbone_step" if embed.shape[1] == 1 else "backbone_prefill"
        hidden, logits = self.graphs.run(graph, embed, position)
        return hidden, logits


class OnnxDepthDecoder:
    """:class:`~csm_core.components.DepthDecoderEngine` over the ``decoder`` graph (T of 1 or 2)."""

    def __init__(self, graphs: _CachedGraphs) -> None:
        self.graphs = graphs

    def reset(self) -> None:
        self.graphs.reset()

    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 2:
            raise ValueError(f"depth decoder: T={x.shape[1]}; the decoder graph takes 1 or 2 positions per call")
        return self.graphs.run("decoder", x, positions)[0]


class OnnxCsmEngines:
    """The ``csm`` component on onnxruntime: ``.backbone`` and ``.decoder``, exported on first use.

    The graphs are exported for ``batch_size`` rows and run exactly that many (:meth:`for_batch`).
    ``frame_decoder`` is the fused frame graph's engine (:mod:`csm_onnxruntime.frame_decoder`) when
    ``fused_frame`` is true (None: ``[options.onnxruntime] fused_frame``), else None.
    """

    frame_decoder = None  # the step path, unless fused_frame

    def __init__(self, model, context: StageContext, batch_size: int = 1, fused_frame: bool | None = None) -> None:
        from csm_onnxruntime.frame_decoder import fused_frame_enabled, open_frame_decoder

        self.batch_size = batch_size
        fused = fused_frame if fused_frame is not None else fused_frame_enabled(context.settings)  # checked first
        device = requested_device(context, model)
        whash = weights_hash(model)
        self.plans = {part: plan_for(context.settings, part) for part in ("backbone", "decoder")}
        sessions, used, self.artifacts = {}, device, []
        for graph in CSM_GRAPHS:
            plan = self.plans[graph_part(graph)]
            spec = csm_spec(model, graph, whash, batch_size, plan)
            export = lambda path, graph=graph: export_csm_part(model, graph, path, batch_size)  # noqa: E731
            sessions[graph], used, artifact = _open_graph(context, spec, _typed_export(export, plan), device, plan)
            self.artifacts.append(artifact)
        a = model.args
        tensor_device = torch.device(used if used.startswith("cuda") else "cpu")
        self.backbone = OnnxBackbone(
            _CachedGraphs(
                {g: sessions[g] for g in CSM_GRAPHS[:2]}, a.backbone_layers, csm_cache_shape(model, "backbone", batch_size),
                TORCH_DTYPES[self.plans["backbone"].dtype], tensor_device, batch_size,
                {"hidden_states": a.backbone_dim, "logits": a.audio_vocab_size},
            ),
            a.max_seq_len,
        )
        self.decoder = OnnxDepthDecoder(
            _CachedGraphs(
                {"decoder": sessions["decoder"]}, a.decoder_layers, csm_cache_shape(model, "decoder", batch_size),
                TORCH_DTYPES[self.plans["decoder"].dtype], tensor_device, batch_size, {"logits": a.audio_vocab_size},
            )
        )
        self.device = used
        if fused:
            self.frame_decoder, artifact = open_frame_decoder(model, context, self.artifacts[CSM_GRAPHS.index("decoder")],
                                                              whash, self.plans["decoder"], batch_size)
            self.artifacts.append(artifact)

    def for_batch(self, rows: int) -> "OnnxCsmEngines | None":
        """``self`` for the batch the graphs were exported for; None for any other (a fixed batch)."""
        return self if rows == self.batch_size else None


class OnnxMimi:
    """:class:`~csm_core.components.CodecEngine`: Mimi's streaming decoder and encoder as ONNX graphs.

    ``decode`` runs the decoder step graph over all frames from a fresh state. ``encode`` runs the
    streaming encoder step graph (:mod:`csm_export.mimi_encoder`) one frame at a time with its explicit
    state; that graph is exported (or loaded from the cache) on the first ``encode``, so pipelines that
    never encode audio do not pay for it.
    """

    def __init__(self, mimi, context: StageContext, num_codebooks: int = 32, batch_size: int = 1) -> None:
        from csm_model.mimi import TorchMimi
        from csm_model.sources import check_codec_precision

        check_codec_precision(context.settings, "onnxruntime")
        self.torch = TorchMimi(mimi, num_codebooks)  # validation, encoder and the initial state
        self.context = context
        self.sample_rate = self.torch.sample_rate
        self.frame_rate = self.torch.frame_rate
        self.samples_per_frame = self.torch.samples_per_frame
        self.codebook_size = self.torch.codebook_size
        self.num_codebooks = num_codebooks
        self.batch_size = batch_size
        config = mimi.config
        spec = ArtifactSpec(
            component="mimi_decoder_step",
            weights_hash=weights_hash(mimi),
            export={"exporter": EXPORTER, "opset": OPSET, "batch_size": batch_size, "dtype": "float32"},
            facts={"sample_rate": config.sampling_rate, "codebooks": num_codebooks,
                   "cache_size": config.sliding_window or 0},
        )
        build = lambda path: export_mimi_decoder_step(mimi, num_codebooks, path, batch_size)  # noqa: E731
        device = requested_device(context, mimi)
        self.session, self.device, self.artifact = _open_graph(context, spec, build, device)
        self.state_names = [i.name.removeprefix("state.") for i in self.session.get_inputs()[1:]]
        self._mimi, self._device = mimi, device
        self.encoder_session = None

    def open_encoder(self):
        """The encoder step graph's session, exported on first use (``csmctl export`` calls this)."""
        if self.encoder_session is None:
            from csm_export.mimi_encoder import export_mimi_encoder_step, mimi_encoder_spec
            from csm_model.mimi_encoder_streaming import MimiStreamingEncoder

            mimi, count, rows = self._mimi, self.num_codebooks, self.batch_size
            build = lambda path: export_mimi_encoder_step(mimi, count, path, rows)  # noqa: E731
            session, _, self.encoder_artifact = _open_graph(
                self.context, mimi_encoder_spec(mimi, count, rows), build, self._device
            )
            self._encoder_outputs = [o.name for o in session.get_outputs()]
            self._encoder_chunk = session.get_inputs()[0].shape[2]  # samples per call (one frame)
            initial = MimiStreamingEncoder(mimi, count).init_state(rows).tensors()
            self._encoder_init = {f"state.{n}": t.cpu().numpy() for n, t in initial.items()}
            self.encoder_session = session
        return self.encoder_session

    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """``pcm`` [B,1,N] -> codes [B,K,ceil(N/1920)]: the end padded with zeros to whole frames (as
        :meth:`TorchMimi.encode <csm_model.mimi.TorchMimi.encode>`), rows in groups of the graph's batch."""
        session = self.open_encoder()
        pcm = self.torch._check_pcm(pcm).float()
        device, rows = pcm.device, pcm.shape[0]
        frames = -(-pcm.shape[-1] // self.samples_per_frame)
        pcm = torch.nn.functional.pad(pcm, (0, -pcm.shape[-1] % self._encoder_chunk))  # whole chunks
        pcm = torch.nn.functional.pad(pcm, (0, 0, 0, 0, 0, -rows % self.batch_size)).cpu().numpy()  # whole batches
        groups = []
        for first in range(0, pcm.shape[0], self.batch_size):
            group, state, pieces = pcm[first : first + self.batch_size], self._encoder_init, []
            for start in range(0, group.shape[-1], self._encoder_chunk):
                feed = {"pcm": group[..., start : start + self._encoder_chunk], **state}
                out = dict(zip(self._encoder_outputs, session.run(None, feed)))
                pieces.append(out.pop("codes"))
                state = {"state." + n.removeprefix("new_state."): v for n, v in out.items()}
            groups.append(np.concatenate(pieces, axis=-1))
        return torch.from_numpy(np.concatenate(groups, axis=0)[:rows, :, :frames]).to(device, torch.int64)

    def init_state(self, batch_size: int = 1):
        if batch_size != self.batch_size:
            raise ValueError(f"batch_size={batch_size}: the Mimi decoder graph was exported for batch {self.batch_size}")
        return self.torch.init_state(batch_size)

    def decode_step(self, codes: torch.Tensor, state):
        from csm_model.mimi_streaming import MimiDecoderState

        if not isinstance(state, MimiDecoderState):
            raise TypeError(f"state must be a MimiDecoderState from init_state(), got {type(state).__name__}")
        codes = self.torch._check_codes(codes)
        if codes.shape[0] != state.batch_size:
            raise ValueError(f"codes has batch size {codes.shape[0]} but the state was made for {state.batch_size}")
        tensors = state.tensors()
        feed = {"codes": codes.cpu().numpy()}
        feed.update({f"state.{n}": tensors[n].cpu().numpy() for n in self.state_names})
        out = self.session.run(None, feed)
        device = codes.device
        new = MimiDecoderState.from_tensors(
            {n: torch.from_numpy(v).to(device) for n, v in zip(self.state_names, out[1:])}
        )
        return torch.from_numpy(out[0]).to(device), new

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_step(codes, self.init_state(codes.shape[0]))[0]
