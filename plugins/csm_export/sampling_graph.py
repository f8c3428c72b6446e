"""The core's choice of a code (:func:`csm_core.generation.sampling.sample`) as ONNX nodes.

A graph that decodes a whole frame chooses each code inside itself, so it needs the core's sampling in
graph ops, op for op:

- ``limit``: the logits cut to the first ``V' = min(code_limit, V)`` codes (``Slice``);
- greedy (``temperature == 0`` or ``top_k == 1``): ``ArgMax`` of the cut logits (first index on ties,
  as ``torch.argmax``);
- otherwise :func:`~csm_core.generation.sampling.filter_logits` and
  :func:`~csm_core.generation.sampling.choose_with_noise`: ``(logits - max) / temperature`` (float32,
  the temperature as float32, as torch divides by a Python float); codes below the ``top_k``-th score set
  to ``-inf`` (``TopK``, only when ``top_k < V'``); the top-p cut over the scores sorted descending
  (``Softmax``, ``CumSum``, ``cumsum - probs >= top_p``, only when ``top_p < 1``); ``Softmax``; then the
  exponential race ``ArgMax(probs / noise)`` over the noise the core drew
  (:func:`~csm_core.generation.sampling.draw_noise`).

The parameters are graph inputs, shared by every choice of the graph (:data:`PARAMETER_INPUTS`):
``temperature`` float32 [], ``top_k`` int64 [] (``V`` or more: no limit), ``top_p`` float32 []
(1: no limit) and ``code_limit`` int64 [] (``V`` or more: no limit). Greedy, top-k and top-p are
``If`` branches, so a greedy graph runs ``ArgMax`` alone and the sort of top-p runs only when asked for.

Exactness: every step is the same IEEE operation as the core's on the same float32 values except
``Softmax`` and ``CumSum``, whose last bits differ between ONNX Runtime's kernels and torch's (a few
float32 ulps). A chosen code can therefore differ from the core's only where two codes' race ratios
(or a cumulative probability and ``top_p``) are within that rounding of each other.
"""

from __future__ import annotations

INT64_MAX = 2**63 - 1
PARAMETER_INPUTS = ("temperature", "top_k", "top_p", "code_limit")

# Names of the tensors :func:`parameter_nodes` computes once per graph.
_LIMIT = "sample.limit"  # [1] int64: V' = min(code_limit, V)
_K = "sample.k"  # [1] int64: min(top_k, V')
_GREEDY, _TOP_K_ON, _TOP_P_ON = "sample.greedy", "sample.top_k_on", "sample.top_p_on"


def constants(vocab: int) -> list:
    """The initializers :func:`parameter_nodes` and :func:`choice_nodes` read (add them once per graph)."""
    from onnx import TensorProto, helper

    return [
        helper.make_tensor("sample.vocab", TensorProto.INT64, [], [vocab]),
        helper.make_tensor("sample.one_i", TensorProto.INT64, [], [1]),
        helper.make_tensor("sample.zero_f", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("sample.one_f", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("sample.neg_inf", TensorProto.FLOAT, [], [float("-inf")]),
        helper.make_tensor("sample.shape_1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("sample.axis_1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("sample.start_0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("sample.start_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("sample.end_max", TensorProto.INT64, [1], [INT64_MAX]),
        helper.make_tensor("sample.axis_scalar_1", TensorProto.INT64, [], [1]),
    ]


def parameter_inputs() -> list:
    """The graph inputs of the sampling parameters (:data:`PARAMETER_INPUTS`), all scalars."""
    from onnx import TensorProto, helper

    types = {"temperature": TensorProto.FLOAT, "top_k": TensorProto.INT64, "top_p": TensorProto.FLOAT,
             "code_limit": TensorProto.INT64}
    return [helper.make_tensor_value_info(name, types[name], []) for name in PARAMETER_INPUTS]


def parameter_nodes() -> list:
    """Nodes computing, once per graph, V', the effective k and the greedy / top-k / top-p switches."""
    from onnx import helper

    n = helper.make_node
    return [
        n("Min", ["code_limit", "sample.vocab"], ["sample.limit_scalar"], name="sample/limit"),
        n("Reshape", ["sample.limit_scalar", "sample.shape_1"], [_LIMIT], name="sample/limit_1d"),
        n("Min", ["top_k", "sample.limit_scalar"], ["sample.k_scalar"], name="sample/k"),
        n("Reshape", ["sample.k_scalar", "sample.shape_1"], [_K], name="sample/k_1d"),
        n("Equal", ["temperature", "sample.zero_f"], ["sample.cold"], name="sample/cold"),
        n("Equal", ["top_k", "sample.one_i"], ["sample.top_1"], name="sample/top_1"),
        n("Or", ["sample.cold", "sample.top_1"], [_GREEDY], name="sample/greedy"),
        n("Less", ["top_k", "sample.limit_scalar"], [_TOP_K_ON], name="sample/top_k_on"),
        n("Less", ["top_p", "sample.one_f"], [_TOP_P_ON], name="sample/top_p_on"),
    ]


def _branch(name: str, nodes: list, output: str, elem_type):
    from onnx import helper

    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, elem_type, None)])


def choice_nodes(prefix: str, logits: str, noise: str, code: str) -> list:
    """Nodes choosing ``code`` [B] int64 from ``logits`` [B,V] float32 and ``noise`` [B,V'] float32.

    Every tensor they make is named under ``prefix`` (unique per choice). The graph must hold
    :func:`constants`, :func:`parameter_inputs` and :func:`parameter_nodes`.
    """
    from onnx import TensorProto, helper

    n = helper.make_node
    p = f"{prefix}/"
    cut = p + "limited"
    greedy = _branch(p + "greedy", [n("ArgMax", [cut], [p + "argmax"], axis=1, keepdims=0, name=p + "argmax")],
                     p + "argmax", TensorProto.INT64)
    top_k = _branch(p + "top_k", [
        n("TopK", [p + "scaled", _K], [p + "top_values", p + "top_indices"], axis=-1, largest=1, sorted=1,
          name=p + "top_k"),
        n("Slice", [p + "top_values", "sample.start_last", "sample.end_max", "sample.axis_1"], [p + "kth"],
          name=p + "kth"),
        n("Less", [p + "scaled", p + "kth"], [p + "below_kth"], name=p + "below_kth"),
        n("Where", [p + "below_kth", "sample.neg_inf", p + "scaled"], [p + "top_k_scores"], name=p + "top_k_cut"),
    ], p + "top_k_scores", TensorProto.FLOAT)
    no_top_k = _branch(p + "no_top_k", [n("Identity", [p + "scaled"], [p + "all_k"], name=p + "all_k")],
                       p + "all_k", TensorProto.FLOAT)
    top_p = _branch(p + "top_p", [
        n("TopK", [p + "k_scores", _LIMIT], [p + "sorted", p + "order"], axis=-1, largest=1, sorted=1,
          name=p + "sort"),
        n("Softmax", [p + "sorted"], [p + "sorted_probs"], axis=-1, name=p + "sorted_probs"),
        n("CumSum", [p + "sorted_probs", "sample.axis_scalar_1"], [p + "cumulative"], name=p + "cumulative"),
        n("Sub", [p + "cumulative", p + "sorted_probs"], [p + "above"], name=p + "above"),
        n("GreaterOrEqual", [p + "above", "top_p"], [p + "reached"], name=p + "reached"),
        # The best code always stays (the core's drop[..., 0] = False, which matters for a top_p that is 0
        # in float32): its "above" is exactly 0, every later one's is > 0.
        n("Greater", [p + "above", "sample.zero_f"], [p + "not_best"], name=p + "not_best"),
        n("And", [p + "reached", p + "not_best"], [p + "drop"], name=p + "drop"),
        n("Where", [p + "drop", "sample.neg_inf", p + "sorted"], [p + "kept"], name=p + "kept"),
        n("ScatterElements", [p + "k_scores", p + "order", p + "kept"], [p + "top_p_scores"], axis=1,
          name=p + "unsort"),
    ], p + "top_p_scores", TensorProto.FLOAT)
    no_top_p = _branch(p + "no_top_p", [n("Identity", [p + "k_scores"], [p + "all_p"], name=p + "all_p")],
                       p + "all_p", TensorProto.FLOAT)
    sampled = _branch(p + "sampled", [
        n("ReduceMax", [cut, "sample.axis_1"], [p + "max"], keepdims=1, name=p + "max"),
        n("Sub", [cut, p + "max"], [p + "shifted"], name=p + "shifted"),
        n("Div", [p + "shifted", "temperature"], [p + "scaled"], name=p + "scaled"),
        n("If", [_TOP_K_ON], [p + "k_scores"], then_branch=top_k, else_branch=no_top_k, name=p + "if_top_k"),
        n("If", [_TOP_P_ON], [p + "scores"], then_branch=top_p, else_branch=no_top_p, name=p + "if_top_p"),
        n("Softmax", [p + "scores"], [p + "probs"], axis=-1, name=p + "probs"),
        n("Div", [p + "probs", noise], [p + "race"], name=p + "race"),
        n("ArgMax", [p + "race"], [p + "winner"], axis=1, keepdims=0, name=p + "winner"),
    ], p + "winner", TensorProto.INT64)
    return [
        n("Slice", [logits, "sample.start_0", _LIMIT, "sample.axis_1"], [cut], name=p + "limit"),
        n("If", [_GREEDY], [code], then_branch=greedy, else_branch=sampled, name=p + "if_greedy"),
    ]
