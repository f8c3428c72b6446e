"""What each exported graph is: its name, the part it belongs to, and its artifact key.

ONNX Runtime opens these graphs as sessions; TensorRT builds engines from the same graphs, so both
read the same specs (:func:`csm_spec` for CSM, :func:`causal_lm_spec` for the reply LM,
:func:`whisper_spec` for the transcriber) and share one artifact cache: a graph exported by one
backend is found by the other.
"""

from __future__ import annotations

from csm_export.artifacts import ArtifactSpec
from csm_export.export import EXPORTER, OPSET, csm_cache_shape
from csm_export.lm_export import lm_facts
from csm_export.precision import PrecisionPlan
from csm_export.whisper_export import WHISPER_GRAPHS, whisper_facts

CODEC_SAMPLE_RATE = 24_000  # CSM's codes are Mimi's, at 24 kHz
CSM_GRAPHS = ("backbone_prefill", "backbone_step", "decoder")
CAUSAL_LM_GRAPH = "causal_lm"


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


def _dtype_name(model) -> str:
    """``float32``, ``float16``...: the dtype of ``model``'s weights, which the graph is exported in."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def causal_lm_spec(model, max_positions: int, whash: str) -> ArtifactSpec:
    """The spec of the ``causal_lm`` graph (:mod:`csm_export.lm_export`) of the transformers causal LM
    ``model`` (weights hash ``whash``) with a cache of ``max_positions`` positions, in the weights' dtype."""
    return ArtifactSpec(
        component=CAUSAL_LM_GRAPH,
        weights_hash=whash,
        export={"exporter": EXPORTER, "opset": OPSET, "batch_size": 1, "dtype": _dtype_name(model)},
        facts={**lm_facts(model), "cache_size": max_positions},
    )


def whisper_spec(model, graph: str, max_positions: int, whash: str) -> ArtifactSpec:
    """The spec of ``graph`` (one of :data:`~csm_export.whisper_export.WHISPER_GRAPHS`) of the transformers
    Whisper ``model`` (weights hash ``whash``), in the weights' dtype; the decoder's key holds its cache
    size ``max_positions`` (the encoder's and cross-attention graphs do not depend on it)."""
    if graph not in WHISPER_GRAPHS:
        raise ValueError(f"whisper_spec: graph must be one of {', '.join(WHISPER_GRAPHS)}, got {graph!r}")
    facts = whisper_facts(model)
    if graph == "whisper_decoder":
        facts["cache_size"] = max_positions
    return ArtifactSpec(
        component=graph,
        weights_hash=whash,
        export={"exporter": EXPORTER, "opset": OPSET, "batch_size": 1, "dtype": _dtype_name(model)},
        facts=facts,
    )
