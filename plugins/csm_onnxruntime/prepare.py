"""Ahead-of-time export (``csmctl export``): every graph of the configured weights into the cache."""

from __future__ import annotations

from csm_core.records import StageContext


def prepare_all(context: StageContext, progress) -> list:
    from csm_export.specs import CSM_GRAPHS
    from csm_onnxruntime.engines import OnnxCsmEngines, OnnxMimi
    from csm_model.sources import load_csm_weights, load_mimi_model

    total = len(CSM_GRAPHS) + 3  # + the fused frame graph, the Mimi decoder and encoder
    progress("loading CSM weights", 0, total)
    weights = load_csm_weights(context.settings, "cpu")
    progress("exporting CSM backbone, depth decoder and the fused frame graph", 0, total)
    csm = OnnxCsmEngines(weights.model, context, fused_frame=True)  # every graph, whatever the optimizers
    progress("exporting the Mimi streaming decoder", len(CSM_GRAPHS) + 1, total)
    codec = OnnxMimi(load_mimi_model(context.settings, "cpu"), context)
    progress("exporting the Mimi streaming encoder", len(CSM_GRAPHS) + 2, total)
    codec.open_encoder()
    progress("done", total, total)
    return [a.path for a in csm.artifacts] + [codec.artifact.path, codec.encoder_artifact.path]
