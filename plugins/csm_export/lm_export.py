"""A transformers causal LM as one ONNX graph with explicit, fixed-size key/value caches.

transformers' cache objects hold their tensors as mutable Python state, not as the explicit graph
inputs and outputs a runtime binds. :class:`CausalLmGraph` therefore runs the model's own
modules (embedding, RMS norms, q/k/v/o projections, rotary table, MLP, head) with a static cache
written by ``scatter`` at the given positions, the way :mod:`csm_export.graphs` does for CSM.
Supported are the Llama-family decoders whose layers are exactly that: :data:`SUPPORTED_MODEL_TYPES`
(Qwen3's per-head q/k norms included); others are refused with the list.

The graph (batch 1, ``T`` dynamic in 1..L):

- inputs ``input_ids`` [1,T] int64, ``position_ids`` [1,T] int64 (= the cache slots written),
  ``past_key_values.{i}.key/value`` [1,H_kv,L,head_dim];
- outputs ``logits`` [1,V] float32 (last position), ``present.{i}.key/value`` (same shapes as past).

Query position ``p`` attends to cache slots ``0..p``; slots after the last written one are masked.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from csm_core.errors import CsmError
from csm_export.export import OPSET
from csm_export.graphs import cache_names
from csm_model.model import apply_rope, grouped_attention

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedLm(CsmError):
    """A causal LM whose architecture the static-cache graph does not reproduce."""


def lm_facts(model) -> dict:
    """The shape facts of ``model``'s cache: layers, kv heads, head dim, vocabulary."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab_size": config.vocab_size,
    }


def lm_cache_shape(model, max_positions: int) -> tuple[int, int, int, int]:
    """[1, kv_heads, max_positions, head_dim] of one layer's key (or value) cache."""
    facts = lm_facts(model)
    return (1, facts["kv_heads"], max_positions, facts["head_dim"])


def check_exportable(model, max_positions: int) -> None:
    """Raise :class:`UnsupportedLm` naming what the graph cannot reproduce for ``model``."""
    config = model.config
    kind = config.model_type
    hint = "run the llm stage on PyTorch instead: backends.llm = \"pytorch\" (or --backend pytorch)"
    if kind not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedLm(
            f"the onnxruntime causal_lm export supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, "
            f"not {kind!r}; {hint}"
        )
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE_TYPES:
        raise UnsupportedLm(f"rope_type {rope!r} changes with the sequence length and does not export; {hint}")
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    sliding = ("sliding_attention" in layer_types) if layer_types else window is not None
    if sliding and window is not None and window < max_positions:
        raise UnsupportedLm(
            f"{kind} uses sliding-window attention of {window} positions, shorter than max_positions="
            f"{max_positions}; lower max_positions to {window} or {hint}"
        )


def _attention(attn, x, cos, sin, mask, positions, k_past, v_past):
    """One HF attention module with external caches -> (out [1,T,hidden], k_present, v_present)."""
    b, t, _ = x.shape
    head_dim = attn.head_dim
    q = attn.q_proj(x).view(b, t, -1, head_dim)
    k = attn.k_proj(x).view(b, t, -1, head_dim)
    v = attn.v_proj(x).view(b, t, -1, head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3: RMS norm over each head
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    index = positions[:, None, :, None].expand(b, k.shape[1], t, head_dim)
    k_present = k_past.scatter(2, index, k.to(k_past.dtype))
    v_present = v_past.scatter(2, index, v.to(v_past.dtype))
    out = grouped_attention(q, k_present, v_present, mask, scale=attn.scaling)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k_present, v_present


class CausalLmGraph(nn.Module):
    """``(input_ids, position_ids, *past) -> (logits, *present)`` over a transformers causal LM's modules."""

    def __init__(self, model, max_positions: int) -> None:
        super().__init__()
        self.lm = model
        self.max_positions = max_positions

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        body = self.lm.model
        x = body.embed_tokens(input_ids)
        cos, sin = body.rotary_emb(x, position_ids)  # [1,T,head_dim], the model's own rope scaling
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        slots = torch.arange(self.max_positions, device=x.device)
        mask = (slots[None, None, :] <= position_ids[:, :, None]).unsqueeze(1)  # [1,1,T,L]
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(body.layers):
            h, k, v = _attention(layer.self_attn, layer.input_layernorm(x), cos, sin, mask, position_ids,
                                 past[2 * i], past[2 * i + 1])
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            presents += [k, v]
        last = body.norm(x)[:, -1]
        return (self.lm.lm_head(last).float(), *presents)


def export_causal_lm(model, path: Path, max_positions: int) -> None:
    """Export :class:`CausalLmGraph` of (a copy of) ``model`` with ``T`` dynamic in 1..max_positions."""
    check_exportable(model, max_positions)
    model = copy.deepcopy(model).eval()
    p = next(model.parameters())
    layers = model.config.num_hidden_layers
    past = tuple(torch.zeros(lm_cache_shape(model, max_positions), dtype=p.dtype, device=p.device)
                 for _ in range(2 * layers))
    input_ids = torch.zeros(1, 2, dtype=torch.int64, device=p.device)
    positions = torch.arange(2, device=p.device)[None]
    dim_t = torch.export.Dim("T", min=1, max=max_positions)
    dynamic = ({1: dim_t}, {1: dim_t}, tuple(None for _ in past))
    past_names, present_names = cache_names(layers)
    module = CausalLmGraph(model, max_positions).eval()
    with torch.no_grad():
        program = torch.export.export(module, (input_ids, positions, *past), dynamic_shapes=dynamic, strict=False)
        onnx_program = torch.onnx.export(
            program, (input_ids, positions, *past), input_names=["input_ids", "position_ids", *past_names],
            output_names=["logits", *present_names], opset_version=OPSET, dynamo=True, verbose=False,
        )
    onnx_program.save(str(path))
