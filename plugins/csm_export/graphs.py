"""Export-friendly wrappers: CSM and Mimi components as pure functions of explicit tensors.

The PyTorch engines keep their caches inside the modules and update them in place. For export, every
component here is an ``nn.Module`` whose ``forward`` takes the caches as inputs and returns the updated
caches as outputs (nothing is modified in place), sharing the weights of the wrapped model.

CSM graphs follow optimum / onnxruntime-genai names: inputs ``inputs_embeds`` [B,T,D] float,
``position_ids`` [B,T] int64 (the cache slots written, = positions), ``past_key_values.{i}.key/value``
[B,H_kv,L,head_dim]; outputs ``hidden_states`` [B,D] (last position, backbone only), ``logits`` [B,V],
``present.{i}.key/value`` (same shapes as the past). ``L`` is fixed: ``max_seq_len`` for the backbone,
``num_codebooks`` for the depth decoder. Query position ``p`` attends to cache slots ``0..p``.
"""

from __future__ import annotations

import torch
from torch import nn

from csm_model.model import Attention, Csm, Transformer, apply_rope, grouped_attention, rope_inverse_frequencies


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """(past names, present names), keys and values interleaved by layer."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def _attention(attn: Attention, x, cos, sin, mask, positions, k_past, v_past):
    """:class:`Attention` with external caches -> (out [B,T,dim], k_present, v_present)."""
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    index = positions[:, None, :, None].expand(b, attn.kv_heads, t, attn.head_dim)
    k_present = k_past.scatter(2, index, k.to(k_past.dtype))
    v_present = v_past.scatter(2, index, v.to(v_past.dtype))
    out = grouped_attention(q, k_present, v_present, mask)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k_present, v_present


class _FunctionalTransformer(nn.Module):
    """A :class:`Transformer`'s weights run with caches passed in and returned."""

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer
        inv_freq = rope_inverse_frequencies(transformer.args, transformer.head_dim)
        self.register_buffer("inv_freq", inv_freq.to(transformer.norm.weight.device), persistent=False)
        self.max_len = transformer.max_len

    def run(self, x: torch.Tensor, positions: torch.Tensor, caches: tuple[torch.Tensor, ...]):
        # Same arithmetic as Transformer.setup_cache's tables: float32 angle = position * inv_freq.
        angles = positions.to(torch.float32)[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        cos = angles.cos().to(x.dtype).unsqueeze(1)
        sin = angles.sin().to(x.dtype).unsqueeze(1)
        slots = torch.arange(self.max_len, device=x.device)
        mask = (slots[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # [B,1,T,L]
        presents: list[torch.Tensor] = []
        for i, block in enumerate(self.transformer.layers):
            h, k, v = _attention(block.attn, block.attn_norm(x), cos, sin, mask, positions, caches[2 * i], caches[2 * i + 1])
            x = x + h
            x = x + block.mlp(block.mlp_norm(x))
            presents += [k, v]
        return self.transformer.norm(x), presents


class BackboneGraph(nn.Module):
    """``(inputs_embeds, position_ids, *past) -> (hidden_states, logits, *present)`` for the CSM backbone."""

    def __init__(self, model: Csm) -> None:
        super().__init__()
        self.body = _FunctionalTransformer(model.backbone)
        self.head = model.codebook0_head

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        hidden, presents = self.body.run(inputs_embeds, position_ids, past)
        last = hidden[:, -1]
        return (last, self.head(last), *presents)


class DecoderGraph(nn.Module):
    """``(inputs_embeds, position_ids, *past) -> (logits, *present)`` for the depth decoder.

    ``inputs_embeds`` is in the backbone width; the projection and the per-codebook head
    (``audio_head[position_ids[:, -1] - 1]``) are inside the graph.
    """

    def __init__(self, model: Csm) -> None:
        super().__init__()
        self.body = _FunctionalTransformer(model.decoder)
        self.projection = model.projection
        self.model = model

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        hidden, presents = self.body.run(self.projection(inputs_embeds), position_ids, past)
        last = hidden[:, -1]  # [B, Ddec]
        head = self.model.audio_head[position_ids[:, -1] - 1]  # [B, Ddec, V]
        logits = torch.bmm(last.unsqueeze(1), head.to(last.dtype)).squeeze(1)
        return (logits, *presents)


class MimiDecoderStepGraph(nn.Module):
    """``(codes [B,K,F], *state) -> (pcm [B,1,F*frame_size], *new_state)``.

    The state tensors are those of :meth:`MimiDecoderState.tensors`, in that order; inputs are named
    ``state.<name>`` and outputs ``new_state.<name>``.
    """

    def __init__(self, mimi, state_names: list[str]) -> None:
        super().__init__()
        from csm_model.mimi_streaming import MimiStreamingDecoder

        self.mimi = mimi
        self.streamer = MimiStreamingDecoder(mimi)
        self.state_names = list(state_names)

    def forward(self, codes: torch.Tensor, *state: torch.Tensor):
        from csm_model.mimi_streaming import MimiDecoderState

        current = MimiDecoderState.from_tensors(dict(zip(self.state_names, state)))
        pcm, new = self.streamer.step(codes, current)
        tensors = new.tensors()
        return (pcm, *(tensors[n] for n in self.state_names))
