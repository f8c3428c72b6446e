"""The ``causal_lm`` engine of the onnxruntime backend: the reply LM as one exported graph.

The graph (see :mod:`csm_export.lm_export`) is exported on first use into the artifact cache
(:func:`csm_export.artifacts.ensure_artifact`: keyed by the weights hash, component ``causal_lm``,
exporter, opset, dtype and cache size; checksummed; a corrupt or stale file is rebuilt with a message)
and opened with :func:`csm_onnxruntime.session.create_session` (explicit providers, the CUDA check,
``[options.onnxruntime]``). It runs with IO binding over two sets of cache buffers (ping-pong): a call
reads ``past`` from one set and writes ``present`` into the other, then they swap.
"""

from __future__ import annotations

import torch

from csm_core.components import CausalLm
from csm_core.records import StageContext
from csm_core.generation.token_steps import TokenSteps, check_max_positions
from csm_export.artifacts import ensure_artifact, weights_hash
from csm_onnxruntime.engines import cache_dir, requested_device
from csm_onnxruntime.io_binding import CacheBuffers, bind_tensor
from csm_export.lm_export import check_exportable, export_causal_lm, lm_cache_shape
from csm_export.specs import causal_lm_spec
from csm_onnxruntime.session import SessionOptions, create_session, require_provider

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
                         allow_fallback=context.settings.allow_fallback)  # before exporting it
        spec = causal_lm_spec(model, self.max_positions, weights_hash(model))
        self.artifact = ensure_artifact(
            cache_dir(context), spec, lambda path: export_causal_lm(model, path, self.max_positions), context.report
        )
        options = SessionOptions.from_options(context.settings.options.get("onnxruntime"))
        self.session, used = create_session(
            self.artifact.path, self.artifact.sha256, requested_device(context, model), options,
            allow_fallback=context.settings.allow_fallback, report=context.report,
        )
        self.device = torch.device(used if used.startswith("cuda") else "cpu")
        self.vocab_size = model.config.vocab_size
        self.caches = CacheBuffers(model.config.num_hidden_layers, lm_cache_shape(model, self.max_positions), dtype,
                                   self.device)
        self.position = 0

    def reset(self) -> None:
        # Slots after the last written position are masked in the graph: stale values are never read.
        self.position = 0
        self.caches.restart()

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        input_ids = input_ids.to(self.device).contiguous()
        positions = torch.arange(self.position, self.position + t, device=self.device)[None].contiguous()
        logits = torch.empty(1, self.vocab_size, dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        bind_tensor(binding, "input_ids", input_ids)
        bind_tensor(binding, "position_ids", positions)
        self.caches.bind(binding)
        bind_tensor(binding, "logits", logits, output=True)
        self.session.run_with_iobinding(binding)
        self.caches.swap()
        self.position += t
        return logits
