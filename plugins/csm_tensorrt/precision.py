"""Precision plans for TensorRT: the graph pass of :mod:`csm_export.precision`, re-exported.

TensorRT 11 networks are strongly typed (built with ``STRONGLY_TYPED`` on 10.x too), so fp16/bf16 is
written into the ONNX graph before TensorRT sees it; the same pass serves the ONNX Runtime backend,
which is why it lives in csm_export, the layer both backends share.
"""

from __future__ import annotations

from csm_export.precision import (
    DEFAULT_FP32_OPS,
    DEFAULT_LOW_IO_PREFIXES,
    FLOAT_TYPES,
    PrecisionPlan,
    convert_graph,
    plan_for,
)

__all__ = ["DEFAULT_FP32_OPS", "DEFAULT_LOW_IO_PREFIXES", "FLOAT_TYPES", "PrecisionPlan", "convert_graph", "plan_for"]
