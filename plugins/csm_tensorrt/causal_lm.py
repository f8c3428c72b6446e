"""The ``causal_lm`` engine of the tensorrt backend: the reply LM as one TensorRT engine.

Built from the graph ONNX Runtime runs (:mod:`csm_export.lm_export`: the model's own modules over a
static key/value cache of ``max_positions`` slots, ``T`` dynamic), found in or exported to the shared
artifact cache under the very spec ONNX Runtime keys it by (:func:`csm_export.specs.causal_lm_spec`).
As for the CSM graphs, the graph is exported in float32 and the TensorRT precision plan
(``component_precision.llm``, else ``precision``) types a copy of it (:func:`csm_tensorrt.artifacts.typed_graph`):
norms, softmax, RoPE and the logits stay float32, the caches take the reduced dtype. One optimization
profile takes 1..max_positions tokens per call, tuned for one (:mod:`csm_tensorrt.profiles`). The token
loop that drives the engine is the core's (:mod:`csm_core.generation.lm_decoding`).
"""

from __future__ import annotations

import torch

from csm_core.components import CausalLm
from csm_core.generation.token_steps import TokenSteps, check_max_positions
from csm_core.records import StageContext

from . import profiles as P
from .token_decoder import TokenDecoder


class TrtCausalLm(TokenSteps):
    """:class:`~csm_core.components.CausalLmEngine` over a ``causal_lm`` engine (:class:`TokenDecoder`)."""

    def __init__(self, decoder: TokenDecoder, max_positions: int) -> None:
        if decoder.cache_positions != max_positions:
            raise ValueError(
                f"tensorrt causal_lm: the engine's cache holds {decoder.cache_positions} positions, "
                f"max_positions is {max_positions}"
            )
        self.decoder = decoder
        self.max_positions = max_positions
        self.device = decoder.runner.device
        self.position = 0

    def reset(self) -> None:
        self.position = 0
        self.decoder.restart()

    @torch.inference_mode()
    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.decoder.run(input_ids, self.position)
        self.position += input_ids.shape[1]
        return logits


def causal_lm_graph(component: CausalLm, context: StageContext):
    """``(source, spec)``: the shared float32 ``causal_lm`` graph of ``component`` (an
    :class:`~csm_export.artifacts.Artifact`, exported when missing or damaged) and the spec that keys it,
    :func:`csm_export.specs.causal_lm_spec` of the float32 model, as ONNX Runtime keys a float32 model's.
    Checks the cache size and the architecture first (before hashing or copying gigabytes of weights)."""
    from csm_export.artifacts import weights_hash
    from csm_export.lm_export import UnsupportedLm, check_exportable, export_causal_lm
    from csm_export.specs import causal_lm_spec

    from .artifacts import _fp32, onnx_artifact

    max_positions = check_max_positions(component)
    try:
        check_exportable(component.model, max_positions)
    except UnsupportedLm as exc:
        raise UnsupportedLm(f"tensorrt builds the causal_lm engine from the onnxruntime graph: {exc}") from None
    model = _fp32(component.model)
    spec = causal_lm_spec(model, max_positions, weights_hash(model))
    return onnx_artifact(context, spec, lambda path: export_causal_lm(model, path, max_positions)), spec


def causal_lm_engine(component: CausalLm, context: StageContext, progress=None) -> TrtCausalLm:
    """:class:`TrtCausalLm` for ``component`` (a transformers causal LM and its cache size): the shared
    ONNX graph (:func:`causal_lm_graph`), typed by the plan of ``llm``, and the engine built from it when
    missing, stale or damaged (both cached)."""
    from .artifacts import engine_for
    from .precision import plan_for
    from .runtime import TrtRunner

    options = P.TrtOptions.from_settings(context.settings)  # config errors before any export
    plan = plan_for(context.settings, "llm")
    if progress:
        progress(f"tensorrt: {P.CAUSAL_LM}", 0, 1)
    source, spec = causal_lm_graph(component, context)
    max_positions = component.max_positions
    ranges = P.axis_ranges(P.CAUSAL_LM, options, max_seq_len=max_positions)
    engine = engine_for(context, P.CAUSAL_LM, source, spec, plan, options, ranges)
    runner = TrtRunner(engine, torch.device("cuda", torch.cuda.current_device()), P.CAUSAL_LM)
    if progress:
        progress("tensorrt: causal_lm engine ready", 1, 1)
    return TrtCausalLm(TokenDecoder(runner, cuda_graphs=options.cuda_graphs), max_positions)
