"""What each exported CSM graph is: its name, the CSM part it belongs to, and its artifact key.

ONNX Runtime opens these graphs as sessions; TensorRT builds engines from the same graphs, so both
read the same :func:`csm_spec` and share one artifact cache.
"""

from __future__ import annotations

from csm_export.artifacts import ArtifactSpec
from csm_export.export import EXPORTER, OPSET, csm_cache_shape
from csm_export.precision import PrecisionPlan

CODEC_SAMPLE_RATE = 24_000  # CSM's codes are Mimi's, at 24 kHz
CSM_GRAPHS = ("backbone_prefill", "backbone_step", "decoder")


def graph_part(graph: str) -> str:
    """The CSM part a graph belongs to: ``decoder`` or ``backbone``."""
    return "decoder" if graph == "decoder" else "backbone"


def csm_spec(model, graph: str, whash: str, batch_size: int, plan: PrecisionPlan = PrecisionPlan()) -> ArtifactSpec:
    """What a cached CSM graph must be: weights, export settings and precision ``plan`` are in its key."""
    a = model.args
    part = graph_part(graph)
    return ArtifactSpec(
        component=f"csm_{graph}",
        weights_hash=whash,
        export={"exporter": EXPORTER, "opset": OPSET, "batch_size": batch_size, "dtype": "float32",
                "precision": plan.as_dict()},
        facts={"sample_rate": CODEC_SAMPLE_RATE, "codebooks": a.num_codebooks,
               "cache_size": csm_cache_shape(model, part, batch_size)[2]},
    )
