"""The fused frame graph: one frame's depth decoding, the choice of every code included, as one ONNX graph.

The step path of the frame loop (:func:`csm_core.generation.frames.decode_frame`) calls the depth decoder
graph K-1 times a frame and chooses each code in torch between the calls. This graph does the whole
frame in one call: it inlines the ``decoder`` graph (the very graph the step path runs, already typed by
the decoder's precision plan and weight quantization) K-1 times, passes the KV cache from one copy to the
next inside the graph (a fresh zero cache for the first, as the step path's ``reset``), feeds each chosen
code's embedding to the next copy, and chooses each code with the core's sampling as ONNX nodes
(:mod:`csm_export.sampling_graph`). Every copy shares the decoder's initializers.

Inputs (``B`` the batch the decoder graph was exported for, ``V`` the audio vocabulary, ``V'`` the codes
below ``code_limit``):

- ``hidden_states`` [B,D] float32: the backbone's hidden state of the frame;
- ``codebook0`` [B] int64: the codebook-0 code the core chose from the backbone's logits;
- ``audio_embeddings`` [K*V,D] float32: the model's audio embedding table (an input rather than an
  initializer, so the runtime binds the model's own tensor and the graph holds no second copy of it);
- ``temperature``, ``top_k``, ``top_p``, ``code_limit``: scalars (:mod:`csm_export.sampling_graph`);
- ``noise`` [K-1,B,V'] float32: codebooks 1..K-1's Exp(1) draws, in order (any positive values when greedy).

Output: ``codes`` [B,K-1] int64, codebooks 1..K-1.
"""

from __future__ import annotations

from csm_export import sampling_graph
from csm_export.artifacts import ArtifactSpec
from csm_export.precision import PrecisionPlan
from csm_export.specs import csm_spec

COMPONENT = "csm_frame_decoder"
BUILDER_VERSION = 1  # bump when the graph this module builds changes: it is in the cache key
INPUTS = ("hidden_states", "codebook0", "audio_embeddings", *sampling_graph.PARAMETER_INPUTS, "noise")
OUTPUT = "codes"
_DECODER_INPUTS = ("inputs_embeds", "position_ids")


def frame_spec(model, whash: str, batch_size: int, plan: PrecisionPlan = PrecisionPlan()) -> ArtifactSpec:
    """What a cached frame graph must be: the key of the decoder graph it inlines (weights, export
    settings, batch size, the decoder's precision plan and weight quantization) and this builder's
    version, with K and V as facts."""
    decoder = csm_spec(model, "decoder", whash, batch_size, plan)
    return ArtifactSpec(
        component=COMPONENT,
        weights_hash=whash,
        export={**decoder.export, "decoder_graph": decoder.key(), "builder": BUILDER_VERSION},
        facts={**decoder.facts, "vocab": model.args.audio_vocab_size},
    )


def _check_decoder(graph, layers: int) -> None:
    """Raise ValueError unless ``graph`` has the decoder graph's interface and no subgraphs."""
    from onnx import AttributeProto

    from csm_export.graphs import cache_names

    past, present = cache_names(layers)
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    outputs = [o.name for o in graph.output]
    if inputs != [*_DECODER_INPUTS, *past] or outputs != ["logits", *present]:
        raise ValueError(
            f"frame graph: the decoder graph has inputs {inputs[:4]}... and outputs {outputs[:3]}...; expected "
            f"{[*_DECODER_INPUTS, *past][:4]}... and {['logits', *present][:3]}... (a csm_decoder graph of "
            f"{layers} layers from csm_export.export)"
        )
    nested = [n.name for n in graph.node if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in n.attribute)]
    if nested:
        raise ValueError(f"frame graph: the decoder graph has nodes with subgraphs ({nested[:3]}), which it cannot inline")


def _inline(graph, step: int, rename_io: dict[str, str]) -> list:
    """Copies of ``graph``'s nodes for ``step``: graph inputs and outputs renamed by ``rename_io``,
    initializers kept (shared by every step), every other tensor and node name prefixed ``s<step>/``."""
    from onnx import NodeProto

    shared = {t.name for t in graph.initializer}

    def name(tensor: str) -> str:
        if not tensor or tensor in shared:
            return tensor
        return rename_io.get(tensor, f"s{step}/{tensor}")

    nodes = []
    for node in graph.node:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [name(i) for i in node.input]
        copy.output[:] = [name(o) for o in node.output]
        copy.name = f"s{step}/{node.name}"
        nodes.append(copy)
    return nodes


def build_frame_graph(decoder, *, num_codebooks: int, vocab: int, layers: int, batch_size: int):
    """The frame graph (an ``onnx.ModelProto``) over the ``decoder`` graph (a ModelProto, typed as it runs).

    ``layers`` is the decoder's layer count; ``num_codebooks`` (K) and ``vocab`` (V) the model's.
    """
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    from csm_export.graphs import cache_names

    source = decoder.graph
    _check_decoder(source, layers)
    past_names, present_names = cache_names(layers)
    cache_type = next(i.type.tensor_type for i in source.input if i.name == past_names[0])
    cache_shape = [d.dim_value for d in cache_type.shape.dim]
    dim = next(i for i in source.input if i.name == "inputs_embeds").type.tensor_type.shape.dim[2].dim_value
    n = helper.make_node
    b = batch_size

    zero = np.zeros(cache_shape, dtype=helper.tensor_dtype_to_np_dtype(cache_type.elem_type))
    initializers = [*source.initializer, *sampling_graph.constants(vocab),
                    numpy_helper.from_array(zero, "frame.zero_cache"),
                    helper.make_tensor("frame.axis_1", TensorProto.INT64, [1], [1])]
    nodes = [*sampling_graph.parameter_nodes(),
             n("Unsqueeze", ["hidden_states", "frame.axis_1"], ["frame.hidden"], name="frame/hidden")]
    previous_code, cache, codes = "codebook0", ["frame.zero_cache"] * len(past_names), []
    for step in range(1, num_codebooks):
        p = f"s{step}/"
        offset, rows = p + "offset", p + "rows"
        initializers += [
            helper.make_tensor(offset, TensorProto.INT64, [], [(step - 1) * vocab]),
            helper.make_tensor(p + "positions", TensorProto.INT64, [b, 2 if step == 1 else 1],
                               [0, 1] * b if step == 1 else [step] * b),
            helper.make_tensor(p + "noise_index", TensorProto.INT64, [], [step - 1]),
        ]
        # The embedding of the previous codebook's code: row code + (step-1)*V of the audio table.
        nodes += [
            n("Add", [previous_code, offset], [rows], name=p + "rows"),
            n("Gather", ["audio_embeddings", rows], [p + "embed"], axis=0, name=p + "embed"),
            n("Unsqueeze", [p + "embed", "frame.axis_1"], [p + "embed_3d" if step == 1 else p + "x"], name=p + "embed_3d"),
        ]
        if step == 1:  # the first call of a frame: (backbone hidden, codebook 0) at positions (0, 1)
            nodes.append(n("Concat", ["frame.hidden", p + "embed_3d"], [p + "x"], axis=1, name=p + "x"))
        present = [p + name for name in present_names]
        rename = {"inputs_embeds": p + "x", "position_ids": p + "positions", "logits": p + "logits",
                  **dict(zip(past_names, cache)), **dict(zip(present_names, present))}
        nodes += _inline(source, step, rename)
        code = p + "code"
        nodes += [
            n("Gather", ["noise", p + "noise_index"], [p + "noise"], axis=0, name=p + "noise"),
            *sampling_graph.choice_nodes(p + "choose", p + "logits", p + "noise", code),
            n("Unsqueeze", [code, "frame.axis_1"], [code + "_column"], name=p + "code_column"),
        ]
        codes.append(code + "_column")
        previous_code, cache = code, present
    nodes.append(n("Concat", codes, [OUTPUT], axis=1, name="frame/codes"))

    inputs = [
        helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [b, dim]),
        helper.make_tensor_value_info("codebook0", TensorProto.INT64, [b]),
        helper.make_tensor_value_info("audio_embeddings", TensorProto.FLOAT, [num_codebooks * vocab, dim]),
        *sampling_graph.parameter_inputs(),
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, [num_codebooks - 1, b, "codes"]),
    ]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.INT64, [b, num_codebooks - 1])
    graph = helper.make_graph(nodes, COMPONENT, inputs, [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(decoder.opset_import), ir_version=decoder.ir_version,
                              producer_name="csm_export.frame_graph")
    model.functions.extend(decoder.functions)
    return model
