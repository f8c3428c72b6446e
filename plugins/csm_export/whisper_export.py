"""A transformers Whisper as three ONNX graphs: encoder, cross-attention keys/values, decoder with cache.

The layout optimum and sherpa-onnx use: the audio encoder runs once per 30 s window, the decoder once per
token over an explicit self-attention cache, and the cross-attention keys/values of every decoder layer
are computed once per window from the encoder's output (not on every token). As in
:mod:`csm_export.lm_export`, the decoder graph runs the model's own modules (token and position
embeddings, layer norms, q/k/v/out projections, MLP, ``proj_out``) with a static cache written by
``scatter`` at the given positions, because transformers' cache objects are Python state, not graph
inputs and outputs.

Graphs (batch 1; ``S`` = ``max_source_positions`` (1500), ``L`` = the cache's positions, ``H`` heads):

- ``whisper_encoder``: ``input_features`` [1,n_mels,2*S] -> ``encoder_hidden_states`` [1,S,D];
- ``whisper_cross_kv``: ``encoder_hidden_states`` -> ``cross.{i}.key/value`` [1,H,S,head_dim];
- ``whisper_decoder``: ``input_ids`` [1,T], ``position_ids`` [1,T] (T dynamic in 1..L), ``past_key_values.{i}.key/value``
  [1,H,L,head_dim], ``cross.{i}.key/value`` -> ``logits`` [1,V] float32 (last position),
  ``present.{i}.key/value``. Query position ``p`` attends to cache slots ``0..p``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from csm_export.export import _export
from csm_export.graphs import cache_names

WHISPER_GRAPHS = ("whisper_encoder", "whisper_cross_kv", "whisper_decoder")


def cross_names(layers: int) -> list[str]:
    """``cross.{i}.key``, ``cross.{i}.value`` for every decoder layer."""
    return [f"cross.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def whisper_facts(model) -> dict:
    """The shape facts of ``model``'s graphs."""
    c = model.config
    return {
        "model_type": c.model_type,
        "mel_bins": c.num_mel_bins,
        "source_positions": c.max_source_positions,
        "frames": feature_frames(model),
        "decoder_layers": c.decoder_layers,
        "heads": c.decoder_attention_heads,
        "head_dim": c.d_model // c.decoder_attention_heads,
        "vocab_size": c.vocab_size,
    }


def feature_frames(model) -> int:
    """Mel frames of one window: what the encoder requires (``max_source_positions`` times its conv strides)."""
    encoder = model.model.encoder
    return model.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def self_cache_shape(model, max_positions: int) -> tuple[int, int, int, int]:
    """[1, H, max_positions, head_dim] of one decoder layer's self-attention key (or value) cache."""
    facts = whisper_facts(model)
    return (1, facts["heads"], max_positions, facts["head_dim"])


def cross_shape(model) -> tuple[int, int, int, int]:
    """[1, H, S, head_dim] of one decoder layer's cross-attention keys (or values)."""
    facts = whisper_facts(model)
    return (1, facts["heads"], facts["source_positions"], facts["head_dim"])


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, -1, head_dim).transpose(1, 2)


class WhisperEncoderGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features).last_hidden_state


class WhisperCrossKvGraph(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.layers = model.model.decoder.layers

    def forward(self, encoder_hidden_states: torch.Tensor):
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            out += [_heads(attn.k_proj(encoder_hidden_states), attn.head_dim),
                    _heads(attn.v_proj(encoder_hidden_states), attn.head_dim)]
        return tuple(out)


class WhisperDecoderGraph(nn.Module):
    """``(input_ids, position_ids, *past, *cross) -> (logits, *present)`` over a Whisper's decoder modules."""

    def __init__(self, model, max_positions: int) -> None:
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.max_positions = max_positions

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *caches: torch.Tensor):
        decoder = self.decoder
        layers = len(decoder.layers)
        past, cross = caches[: 2 * layers], caches[2 * layers:]
        x = decoder.embed_tokens(input_ids) * decoder.embed_scale + decoder.embed_positions.weight[position_ids]
        slots = torch.arange(self.max_positions, device=x.device)
        mask = (slots[None, None, :] <= position_ids[:, :, None]).unsqueeze(1)  # [1,1,T,L]
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(decoder.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(attn.q_proj(h) * attn.scaling, attn.head_dim)  # transformers scales q before q @ k
            k, v = _heads(attn.k_proj(h), attn.head_dim), _heads(attn.v_proj(h), attn.head_dim)
            b, _, t, head_dim = k.shape
            index = position_ids[:, None, :, None].expand(b, k.shape[1], t, head_dim)
            k_present = past[2 * i].scatter(2, index, k.to(past[2 * i].dtype))
            v_present = past[2 * i + 1].scatter(2, index, v.to(past[2 * i + 1].dtype))
            out = F.scaled_dot_product_attention(q, k_present, v_present, attn_mask=mask, scale=1.0)
            x = x + attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))
            cross_attn = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = _heads(cross_attn.q_proj(h) * cross_attn.scaling, cross_attn.head_dim)
            out = F.scaled_dot_product_attention(q, cross[2 * i], cross[2 * i + 1], scale=1.0)
            x = x + cross_attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            presents += [k_present, v_present]
        last = decoder.layer_norm(x)[:, -1]
        return (self.proj_out(last).float(), *presents)


def export_whisper_graph(model, graph: str, path: Path, max_positions: int) -> None:
    """Export ``graph`` (one of :data:`WHISPER_GRAPHS`) of (a copy of) ``model`` to ``path``."""
    model = copy.deepcopy(model).eval()
    p = next(model.parameters())
    layers = model.config.decoder_layers
    hidden = torch.zeros(1, model.config.max_source_positions, model.config.d_model, dtype=p.dtype, device=p.device)
    if graph == "whisper_encoder":
        features = torch.zeros(1, model.config.num_mel_bins, feature_frames(model), dtype=p.dtype, device=p.device)
        _export(WhisperEncoderGraph(model), (features,), None, path, ["input_features"], ["encoder_hidden_states"])
    elif graph == "whisper_cross_kv":
        _export(WhisperCrossKvGraph(model), (hidden,), None, path, ["encoder_hidden_states"], cross_names(layers))
    elif graph == "whisper_decoder":
        past = tuple(torch.zeros(self_cache_shape(model, max_positions), dtype=p.dtype, device=p.device)
                     for _ in range(2 * layers))
        cross = tuple(torch.zeros(cross_shape(model), dtype=p.dtype, device=p.device) for _ in range(2 * layers))
        input_ids = torch.zeros(1, 2, dtype=torch.int64, device=p.device)
        positions = torch.arange(2, device=p.device)[None]
        dim_t = torch.export.Dim("T", min=1, max=max_positions)
        dynamic = ({1: dim_t}, {1: dim_t}, tuple(None for _ in past + cross))
        past_names, present_names = cache_names(layers)
        _export(WhisperDecoderGraph(model, max_positions), (input_ids, positions, *past, *cross), dynamic, path,
                ["input_ids", "position_ids", *past_names, *cross_names(layers)], ["logits", *present_names])
    else:
        raise ValueError(f"graph must be one of {', '.join(WHISPER_GRAPHS)}, got {graph!r}")
