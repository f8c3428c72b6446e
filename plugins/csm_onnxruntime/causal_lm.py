"""The ``causal_lm`` engine of the onnxruntime backend: the reply LM as one exported graph.

The graph (see :mod:`csm_export.lm_export`) is exported on first use into the artifact cache
(:func:`csm_export.artifacts.ensure_artifact`: keyed by the weights hash, component ``causal_lm``,
exporter, opset, dtype and cache size; checksummed; a corrupt or stale file is rebuilt with a message)
and opened with :func:`csm_onnxruntime.engines._open_graph` (explicit providers, the CUDA check,
``[options.onnxruntime]``). It runs with IO binding over ping-pong cache buffers, as Whisper's decoder
does (:class:`csm_onnxruntime.token_decoder.TokenDecoder`).
"""

from __future__ import annotations

import torch

from csm_core.components import CausalLm
from csm_core.records import StageContext
from csm_core.generation.token_steps import TokenSteps, check_max_positions
from csm_export.artifacts import weights_hash
from csm_onnxruntime.engines import _open_graph, requested_device
from csm_export.lm_export import check_exportable, export_causal_lm, lm_cache_shape
from csm_export.specs import causal_lm_spec
from csm_onnxruntime.session import require_provider
from csm_onnxruntime.token_decoder import TokenDecoder

RUNNABLE_DTYPES = (torch.float32, torch.float16)  # the graph's float types


class OnnxCausalLm(TokenSteps):
    """:class:`~csm_core.components.CausalLmEngine` over the exported ``causal_lm`` graph."""

    def __init__(self, component: CausalLm, context: StageContext) -> None:
        model, self.max_positions = component.model, check_max_positions(component)
        dtype = next(model.parameters()).dtype
        if dtype not in RUNNABLE_DTYPES:
            raise ValueError(
                f"onnxruntime causal_lm: the model is in {dtype}; the graph runs in float32 or float16: "
                "set component_precision.llm = \"fp16\" or \"fp32\""
            )
        check_exportable(model, self.max_positions)  # before hashing gigabytes of weights
        require_provider("the causal_lm graph", requested_device(context, model),
                         allow_fallback=context.settings.allow_fallback)  # before hashing and exporting
        spec = causal_lm_spec(model, self.max_positions, weights_hash(model))
        build = lambda path: export_causal_lm(model, path, self.max_positions)  # noqa: E731
        session, used, self.artifact = _open_graph(context, spec, build, requested_device(context, model))
        self.device = torch.device(used if used.startswith("cuda") else "cpu")
        self.decoder = TokenDecoder(session, model.config.num_hidden_layers, lm_cache_shape(model, self.max_positions),
                                    dtype, self.device, model.config.vocab_size)
        self.position = 0

    def reset(self) -> None:
        self.position = 0
        self.decoder.restart()

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.decoder.run(input_ids, self.position)
        self.position += input_ids.shape[1]
        return logits
