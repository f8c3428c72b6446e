"""Weight-only quantization of the CSM transformer linear layers in an ONNX graph, with ONNX Runtime's
own ``MatMulNBits`` operator (``com.microsoft`` domain).

:func:`quantize_graph` replaces each ``MatMul`` of a transformer layer (``layers.N.`` in the dynamo
exporter's ``pkg.torch.onnx.name_scopes`` metadata: the attention q/k/v/o and MLP gate/up/down
projections) whose weight is a float32 initializer by a ``MatMulNBits`` node, written by
:class:`onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer` (round to nearest,
symmetric: one float32 scale per ``block_size`` weights along the input dimension, no zero points;
``bits`` 8 or 4). Everything else stays as exported: the heads (``codebook0_head``, ``projection``,
``audio_head``), norms, attention and the KV caches. A graph in which no transformer linear layer can be
identified (no name-scope metadata) is an error, never a graph left silently unquantized.

``accuracy_level`` 4 lets the CPU provider compute with int8-quantized activations (per block, dynamic)
on its VNNI/AMX kernels; level 0 (float32 compute) is far slower (measurements: docs/optimizers.md,
weight-quantization), so the plan always asks for 4.
The plan (:class:`WeightPlan`) is part of :class:`csm_export.precision.PrecisionPlan` and so of
the graph cache key: a quantized graph is never taken for a float32 one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

BITS = (8, 4)
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations in the CPU provider's kernels
QUANTIZED_OP = "MatMulNBits"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
LAYER_SCOPE = re.compile(r"(^|\.)layers\.\d+\.")


@dataclass(frozen=True)
class WeightPlan:
    """How the transformer linear weights of one graph are stored: ``bits`` (8 or 4) per weight and one
    float32 scale per ``block_size`` weights along the input dimension (symmetric)."""

    bits: int
    block_size: int = 128

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"weight quantization bits={self.bits!r}: onnxruntime's MatMulNBits is used with 8 or 4 bits")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"weight quantization block_size={self.block_size!r}: choose one of {BLOCK_SIZES}")

    def as_dict(self) -> dict:
        """A JSON-able description (part of the graph cache key)."""
        return {"op": QUANTIZED_OP, "bits": self.bits, "block_size": self.block_size, "symmetric": True,
                "accuracy_level": ACCURACY_LEVEL, "scope": "transformer layers"}


def weight_plan_for(settings, part: str) -> WeightPlan | None:
    """The :class:`WeightPlan` of CSM ``part`` (backbone | decoder) from the config, or None."""
    quantization = settings.weight_quantization_of(part)
    return None if quantization is None else WeightPlan(quantization.bits, quantization.block_size)


def _name_scopes(node) -> str | None:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return prop.value
    return None


def transformer_linear_nodes(model) -> list[str]:
    """Names of the ``MatMul`` nodes of ``model`` that belong to a transformer layer (``layers.N.`` in
    their name scopes) and multiply by a 2-D float32 initializer: the nodes :func:`quantize_graph` replaces."""
    from onnx import TensorProto

    initializers = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2:
            continue
        scopes = _name_scopes(node)
        if scopes is not None and LAYER_SCOPE.search(scopes):
            names.append(node.name)
    return names


def quantize_graph(model, plan: WeightPlan):
    """A copy of ONNX ``model`` with its transformer linear layers as ``MatMulNBits`` nodes (see the
    module docstring). Raises ValueError when no such layer is found or not every one was replaced."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    names = transformer_linear_nodes(model)
    if not names:
        raise ValueError(
            "weight quantization: no transformer linear layer found in the graph (MatMul nodes with a float32 "
            f"weight whose '{NAME_SCOPES}' metadata names a 'layers.N.' module); the graphs must come from "
            "csm_export.export"
        )
    others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in names]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(max(level, logging.WARNING))  # one INFO line per node otherwise
    try:
        quantizer = MatMulNBitsQuantizer(
            copy, bits=plan.bits, block_size=plan.block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
            nodes_to_include=names, nodes_to_exclude=others,
        )
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    quantized = quantizer.model.model
    replaced = [n for n in quantized.graph.node if n.op_type == QUANTIZED_OP]
    if len(replaced) != len(names) or any(n.op_type == "MatMul" and n.name in names for n in quantized.graph.node):
        raise ValueError(
            f"weight quantization: {len(names)} transformer linear layers were to become {QUANTIZED_OP} "
            f"({plan.bits} bits, block {plan.block_size}), but {len(replaced)} did"
        )
    return quantized


def quantized_layers(model) -> list[dict]:
    """``[{"name", "bits", "block_size", "K", "N"}]`` of the ``MatMulNBits`` nodes of ``model``: what a
    stored graph really holds (for tests and reports)."""
    from onnx import helper

    found = []
    for node in model.graph.node:
        if node.op_type == QUANTIZED_OP:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            found.append({"name": node.name, "bits": attrs.get("bits"), "block_size": attrs.get("block_size"),
                          "K": attrs.get("K"), "N": attrs.get("N")})
    return found
