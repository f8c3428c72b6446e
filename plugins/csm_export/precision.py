"""Precision plans: which dtype each part of a graph runs in, written into the ONNX graph itself.

Reduced precision is set *in the graph*, not by runtime flags, so ONNX Runtime and TensorRT run the
same typed graph (TensorRT 11 removed its weakly-typed precision flags ``BuilderFlag.FP16``/``BF16`` and
``OBEY_PRECISION_CONSTRAINTS``; a network is strongly typed and runs each layer in its tensors' dtype).
:func:`convert_graph` turns float32 initializers into fp16/bf16 ones, puts ``Cast`` nodes where a tensor
crosses between a reduced-precision node and one kept in float32, and leaves everything else alone.

Kept in float32 (the block list, :data:`DEFAULT_FP32_OPS`): normalisations (the RMSNorm of Llama exports
as Pow/ReduceMean/Sqrt/Reciprocal or Div), softmax and exponentials, RoPE's Cos/Sin, and every node that
produces a graph output named in ``fp32_outputs`` (the logits). KV-cache inputs/outputs
(``past_key_values.*``/``present.*``) take the reduced dtype so the caches stay half the size; the other
graph inputs and outputs (``inputs_embeds``, ``hidden_states``, ``logits``) keep their float32 types.

:func:`plan_for` reads the plan of a component from the config (:meth:`csm_core.config.Settings.precision_of`).

Weight-only quantization (``PrecisionPlan.weights``, from ``Settings.weight_quantization``): the
transformer linear layers of a float32 graph become ONNX Runtime ``MatMulNBits`` nodes (8 or 4 bits,
:mod:`csm_export.quantization`), applied by :func:`convert_graph` after the dtype pass. It is
part of :meth:`PrecisionPlan.as_dict` and so of the cache key; with a reduced ``dtype`` it is an error
(the quantized layers compute in float32 activations).
It lives in csm_export, the layer both ONNX backends share; :mod:`csm_tensorrt.precision` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from csm_export.quantization import WeightPlan, quantize_graph, weight_plan_for

FLOAT_TYPES = ("fp32", "fp16", "bf16")

# Ops kept in float32 in a reduced-precision plan: norms, softmax, exponentials and reductions.
DEFAULT_FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "RMSNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Softmax",
        "LogSoftmax",
        "Exp",
        "Log",
        "CumSum",
        "Cos",
        "Sin",
        "Range",
    }
)
# Ops whose output dtype is not that of their inputs, or that only look at shapes: never converted,
# and their inputs are left in whatever dtype they arrive in when marked "any".
_NOT_CONVERTED = frozenset(
    {"Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size", "If", "Loop", "Scan",
     "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "NonZero",
     "ArgMax", "ArgMin", "TopK", "QuantizeLinear", "DequantizeLinear"}
)
_ANY_INPUT_TYPE = frozenset({"Shape", "Size"})
# Inputs that keep float32 whatever the node runs in (scales and regions of interest).
_FLOAT32_INPUT_SLOTS = {"Resize": (1, 2), "Upsample": (1,)}
DEFAULT_LOW_IO_PREFIXES = ("past_key_values.", "present.")


@dataclass(frozen=True)
class PrecisionPlan:
    """How one graph is typed. ``dtype`` "fp32" means: leave the graph as exported."""

    dtype: str = "fp32"
    fp32_ops: frozenset[str] = DEFAULT_FP32_OPS
    fp32_outputs: tuple[str, ...] = ("logits",)
    low_io_prefixes: tuple[str, ...] = DEFAULT_LOW_IO_PREFIXES
    weights: WeightPlan | None = None  # weight-only quantization of the transformer linear layers

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_TYPES:
            raise ValueError(f"precision must be one of {', '.join(FLOAT_TYPES)}, got {self.dtype!r}")
        if self.weights is not None and self.dtype != "fp32":
            raise ValueError(
                f"weight quantization ({self.weights.bits} bits) runs on a float32 part, but its precision is "
                f"{self.dtype}: set component_precision for it to fp32, or drop weight_quantization "
                "(selective-precision and weight-quantization do not combine)"
            )

    @property
    def changes_graph(self) -> bool:
        """Whether :func:`convert_graph` changes anything (a reduced dtype or quantized weights)."""
        return self.dtype != "fp32" or self.weights is not None

    def as_dict(self) -> dict:
        """A JSON-able, order-independent description (part of the engine cache key)."""
        return {
            "dtype": self.dtype,
            "fp32_ops": sorted(self.fp32_ops),
            "fp32_outputs": sorted(self.fp32_outputs),
            "low_io_prefixes": sorted(self.low_io_prefixes),
            **({"weights": self.weights.as_dict()} if self.weights is not None else {}),
        }


def plan_for(settings, component: str) -> PrecisionPlan:
    """The plan of ``component`` from the config (:meth:`~csm_core.config.Settings.precision_of`).

    ``component`` is ``backbone``, ``decoder``, ``codec``, or ``csm`` for one plan covering both CSM
    transformer parts (an error when the config gives them different precisions or weight
    quantizations). The CSM parts carry their ``weight_quantization`` (:class:`WeightPlan`) too.
    """
    if component == "csm":
        backbone, decoder = settings.precision_of("backbone"), settings.precision_of("decoder")
        if backbone != decoder:
            raise ValueError(
                f"one precision plan for the whole CSM was asked for, but component_precision gives the backbone "
                f"{backbone} and the decoder {decoder}: give both the same precision (or set component_precision.csm)"
            )
        weights = weight_plan_for(settings, "backbone")
        if weights != weight_plan_for(settings, "decoder"):
            raise ValueError(
                "one precision plan for the whole CSM was asked for, but weight_quantization differs between the "
                "backbone and the decoder: give both the same (or set weight_quantization.csm)"
            )
        return PrecisionPlan(dtype=backbone, weights=weights)
    weights = weight_plan_for(settings, component) if component in ("backbone", "decoder") else None
    return PrecisionPlan(dtype=settings.precision_of(component), weights=weights)


def convert_graph(model, plan: PrecisionPlan):
    """A copy of the ONNX ``model`` typed by ``plan`` (fp32 plans without weight quantization return an
    unchanged copy).

    Float32 tensors consumed by converted nodes are cast (initializers are converted once, ahead of
    time); reduced-precision tensors consumed by float32 nodes or graph outputs are cast back.
    Subgraphs (If/Loop/Scan) are left in float32. ``plan.weights``: the transformer linear layers
    become ``MatMulNBits`` nodes (:func:`csm_export.quantization.quantize_graph`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    if plan.weights is not None:  # only on float32 plans (PrecisionPlan checks)
        return quantize_graph(converted, plan.weights)
    if plan.dtype == "fp32":
        return converted
    low = TensorProto.FLOAT16 if plan.dtype == "fp16" else TensorProto.BFLOAT16
    low_tag = plan.dtype
    fp32 = TensorProto.FLOAT

    inferred = onnx.shape_inference.infer_shapes(converted)
    graph = converted.graph
    types: dict[str, int] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        types[name] = init.data_type

    # Graph inputs/outputs that carry the KV caches take the reduced dtype.
    def low_io(name: str) -> bool:
        return any(name.startswith(prefix) for prefix in plan.low_io_prefixes)

    current: dict[str, int] = dict(types)  # the dtype each tensor has after conversion
    for value in graph.input:
        if value.name not in initializers and types.get(value.name) == fp32 and low_io(value.name):
            value.type.tensor_type.elem_type = low
            current[value.name] = low

    producers = {out: node for node in graph.node for out in node.output}
    fp32_producers = {id(producers[name]) for name in plan.fp32_outputs if name in producers}

    def runs_low(node) -> bool:
        if node.op_type in _NOT_CONVERTED or node.op_type in plan.fp32_ops or id(node) in fp32_producers:
            return False
        if node.domain not in ("", "ai.onnx"):
            return False
        return any(types.get(i) == fp32 for i in node.input if i)

    new_nodes = []
    new_initializers = []
    casts: dict[tuple[str, int], str] = {}

    def as_type(name: str, want: int) -> str:
        """The name of ``name`` converted to ``want`` (a converted initializer or a Cast output)."""
        key = (name, want)
        if key in casts:
            return casts[key]
        if name in initializers and want == low and current.get(name) == fp32:
            array = numpy_helper.to_array(initializers[name])
            target = f"{name}.{low_tag}"
            if low == TensorProto.FLOAT16:
                tensor = numpy_helper.from_array(to_float16(array), target)
            else:
                tensor = helper.make_tensor(target, low, array.shape, to_bfloat16_bits(array).tobytes(), raw=True)
            new_initializers.append(tensor)
        else:
            target = f"{name}.to_{'fp32' if want == fp32 else low_tag}"
            new_nodes.append(helper.make_node("Cast", [name], [target], to=want, name=f"cast/{target}"))
        casts[key] = target
        return target

    for node in graph.node:
        low_node = runs_low(node)
        want = low if low_node else fp32
        float32_slots = _FLOAT32_INPUT_SLOTS.get(node.op_type, ())
        if node.op_type not in _ANY_INPUT_TYPE:
            for slot, name in enumerate(node.input):
                if not name or types.get(name) != fp32:
                    continue
                slot_want = fp32 if slot in float32_slots else want
                if current.get(name, fp32) != slot_want:
                    node.input[slot] = as_type(name, slot_want)
        new_nodes.append(node)
        if low_node:
            for out in node.output:
                if types.get(out) == fp32:
                    current[out] = low

    # Graph outputs: the KV caches leave in the reduced dtype, everything else as exported.
    for value in graph.output:
        name = value.name
        if types.get(name) != fp32:
            continue
        if low_io(name):
            if current.get(name) != low:  # produced in fp32: cast down under the output's name
                _rename_tensor(new_nodes, name, f"{name}.fp32")
                new_nodes.append(helper.make_node("Cast", [f"{name}.fp32"], [name], to=low, name=f"cast/{name}"))
            value.type.tensor_type.elem_type = low
        elif current.get(name) == low:
            _rename_tensor(new_nodes, name, f"{name}.{low_tag}")
            new_nodes.append(helper.make_node("Cast", [f"{name}.{low_tag}"], [name], to=fp32, name=f"cast/{name}"))

    graph.initializer.extend(new_initializers)
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, graph))
    used = {i for node in graph.node for i in node.input}
    kept = [init for init in graph.initializer if init.name in used or init.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # stale types; TensorRT and onnx re-infer them
    return converted


FLOAT16_MAX = 65504.0


def to_float16(array):
    """float32 ``array`` as float16, finite values clamped to +-65504 (float16's largest) instead of
    overflowing to infinity: large finite constants (an attention mask's ``finfo(float32).min`` fill)
    stay finite and ordered."""
    import numpy as np

    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    return np.where(finite, np.clip(array, -FLOAT16_MAX, FLOAT16_MAX), array).astype(np.float16)


def to_bfloat16_bits(array):
    """float32 ``array`` as bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    import numpy as np

    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    return np.where(np.isnan(np.asarray(array, dtype=np.float32)), np.uint16(0x7FC0), out)


def _rename_tensor(nodes, old: str, new: str) -> None:
    """Rename tensor ``old`` wherever it is produced or consumed (a Cast then takes the old name)."""
    for node in nodes:
        for slot, out in enumerate(node.output):
            if out == old:
                node.output[slot] = new
        for slot, i in enumerate(node.input):
            if i == old:
                node.input[slot] = new


def _topological(nodes, graph) -> list:
    """``nodes`` ordered so each comes after the producers of its inputs (casts were appended late)."""
    available = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(nodes), []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({i for n in rest for i in n.input if i not in available})
            raise ValueError(f"convert_graph: cannot order the graph, inputs never produced: {missing[:5]}")
        pending = rest
    return ordered
