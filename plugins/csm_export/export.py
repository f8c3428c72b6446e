"""torch -> ONNX, one graph per component, with the dynamo exporter (``torch.export`` + onnxscript).

Each function exports a *copy* of the module it is given (after a dynamo export a module is not
reusable in the same process) and writes a plain ONNX file; :mod:`csm_export.artifacts` adds
metadata and moves it into the cache. ``torch.export.export`` is called first and its program handed to
``torch.onnx.export``: giving ``dynamic_shapes`` for ``*past`` varargs straight to ``torch.onnx.export``
fails its input-structure check (it turns the tuple into a list).

Graphs (``B`` is the batch size fixed at export, 1 by default):

- ``backbone_prefill``: ``T`` dynamic in 1..max_seq_len; ``backbone_step``: ``T = 1``.
- ``decoder``: ``T`` dynamic in 1..2 (2 on the first call of a frame, then 1).
- ``mimi_decoder_step``: ``codes`` [B,K,F] with ``F`` dynamic, state tensors in and out.
- ``frame_decoder``: not exported from torch but assembled from the ``decoder`` graph (K-1 copies and the
  core's sampling as graph ops) by :mod:`csm_export.frame_graph`; ``csmctl export`` builds it with the others.

The Mimi *encoder* is exported as a streaming step instead (:mod:`csm_export.mimi_encoder`): on whole
utterances the dynamo exporter fails on transformers' length-dependent padding
(``GuardOnDataDependentSymNode`` in ``sdpa_attention_forward``) and the TorchScript exporter on ``aten::diff``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from csm_export.graphs import (
    BackboneGraph,
    DecoderGraph,
    MimiDecoderStepGraph,
    cache_names,
)

OPSET = 18
EXPORTER = "dynamo"


def _export(module: torch.nn.Module, args: tuple, dynamic_shapes, path: Path, inputs: list[str], outputs: list[str]):
    module = module.eval()
    with torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        onnx_program = torch.onnx.export(
            program, args, input_names=inputs, output_names=outputs, opset_version=OPSET, dynamo=True,
            verbose=False,
        )
    onnx_program.save(str(path))


def csm_cache_shape(model, part: str, batch_size: int) -> tuple[int, int, int, int]:
    """[B, kv_heads, L, head_dim] of one layer's key (or value) cache of ``part`` (backbone|decoder)."""
    a = model.args
    length = a.max_seq_len if part == "backbone" else a.num_codebooks
    return (batch_size, getattr(a, f"{part}_kv_heads"), length, getattr(a, f"{part}_head_dim"))


def export_csm_part(model, graph: str, path: Path, batch_size: int = 1) -> None:
    """Export ``graph`` (backbone_prefill | backbone_step | decoder) of a :class:`Csm` to ``path``.

    The graph is always float32, whatever dtypes the model's parts have: a reduced-precision plan is
    applied to the graph afterwards (:func:`csm_export.precision.convert_graph`).
    """
    model = copy.deepcopy(model).float().eval()
    part = "decoder" if graph == "decoder" else "backbone"
    layers = getattr(model.args, f"{part}_layers")
    p = model.codebook0_head.weight
    past = tuple(torch.zeros(csm_cache_shape(model, part, batch_size), dtype=p.dtype, device=p.device)
                 for _ in range(2 * layers))
    t = 1 if graph == "backbone_step" else 2
    embeds = torch.randn(batch_size, t, model.args.backbone_dim, dtype=p.dtype, device=p.device)
    positions = torch.arange(t, device=p.device)[None].expand(batch_size, t).contiguous()
    if graph == "backbone_step":
        dynamic = None
    else:
        max_t = model.args.max_seq_len if graph == "backbone_prefill" else 2
        dim_t = torch.export.Dim("T", min=1, max=max_t)
        dynamic = ({1: dim_t}, {1: dim_t}, tuple(None for _ in past))
    past_names, present_names = cache_names(layers)
    if graph == "decoder":
        module, outputs = DecoderGraph(model), ["logits", *present_names]
    else:
        module, outputs = BackboneGraph(model), ["hidden_states", "logits", *present_names]
    _export(module, (embeds, positions, *past), dynamic, path, ["inputs_embeds", "position_ids", *past_names], outputs)


def export_mimi_decoder_step(mimi, num_codebooks: int, path: Path, batch_size: int = 1) -> None:
    from csm_model.mimi_streaming import MimiStreamingDecoder

    mimi = copy.deepcopy(mimi).eval()
    state = MimiStreamingDecoder(mimi).init_state(batch_size).tensors()
    names = list(state)
    codes = torch.randint(0, mimi.config.codebook_size, (batch_size, num_codebooks, 2), device=state[names[0]].device)
    dynamic = ({2: torch.export.Dim.AUTO}, tuple(None for _ in names))
    _export(
        MimiDecoderStepGraph(mimi, names), (codes, *state.values()), dynamic, path,
        ["codes", *(f"state.{n}" for n in names)], ["pcm", *(f"new_state.{n}" for n in names)],
    )
