"""CSM's forward pass for training: whole sequences at once, no KV cache, gradients everywhere.

The inference path of :class:`csm_model.model.Csm` writes keys and values into static caches one
call at a time; training instead runs every position of a batch in one causal pass. This module runs
the *same modules* (norms, projections, MLPs, heads, embedding tables: LoRA wrappers included) with
the same arithmetic, so a trained model speaks through every backend unchanged:

- a frame's embedding is the sum of its present tokens' embeddings (code ``x`` of codebook ``c`` is row
  ``c * V + x`` of the audio table), as in :class:`csm_core.generation.FrameEmbedder`;
- each transformer is pre-norm Llama with rotate-half RoPE at positions ``0..T-1`` (the same
  frequencies as :func:`csm_model.model.rope_inverse_frequencies`) and causal grouped-query
  attention; right-padding is harmless because no real position attends to a later one;
- the depth decoder sees, for one frame, ``[backbone hidden of the previous position, code 0, ...,
  code K-2]`` at positions ``0..K-1`` and predicts codebook ``p`` at position ``p`` with
  ``audio_head[p - 1]`` (what generation does one step at a time).

With ``checkpointing`` every transformer layer is recomputed in the backward pass instead of keeping
its activations (``torch.utils.checkpoint``, non-reentrant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from csm_model.model import Csm, Transformer, apply_rope, rope_inverse_frequencies

__all__ = ["embed_frames", "run_transformer", "backbone_hidden", "decoder_logits"]


def embed_frames(model: Csm, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tokens`` [B,T,K+1] int64 and ``mask`` [B,T,K+1] bool -> frame embeddings [B,T,D]."""
    k, v = model.args.num_codebooks, model.args.audio_vocab_size
    offsets = torch.arange(k, device=tokens.device) * v
    audio = model.audio_embeddings(tokens[..., :k] + offsets)  # [B,T,K,D]
    text = model.text_embeddings(tokens[..., k:])  # [B,T,1,D]
    embeds = torch.cat((audio, text), dim=2) * mask.unsqueeze(-1).to(audio.dtype)
    return embeds.sum(dim=2)


def _rope(part: Transformer, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = rope_inverse_frequencies(part.args, part.head_dim).to(device)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype)[None, None], angles.sin().to(dtype)[None, None]  # [1,1,T,hd]


def _attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    groups = attn.heads // attn.kv_heads
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _block(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x = x + _attention(block.attn, block.attn_norm(x), cos, sin)
    return x + block.mlp(block.mlp_norm(x))


def run_transformer(part: Transformer, x: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """``x`` [B,T,dim] at positions ``0..T-1`` -> normed hidden states [B,T,dim], causally.

    Like :meth:`csm_model.model.Transformer.forward`, the part computes in its own weights' dtype
    and returns the input's dtype.
    """
    out_dtype = x.dtype
    x = x.to(part.dtype)
    cos, sin = _rope(part, x.shape[1], x.device, x.dtype)
    for block in part.layers:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(_block, block, x, cos, sin, use_reentrant=False)
        else:
            x = _block(block, x, cos, sin)
    return part.norm(x).to(out_dtype)


def backbone_hidden(model: Csm, tokens: torch.Tensor, mask: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """The backbone's normed hidden states [B,T,D] of the frames ``tokens``/``mask`` [B,T,K+1]."""
    return run_transformer(model.backbone, embed_frames(model, tokens, mask), checkpointing)


def decoder_logits(model: Csm, hidden: torch.Tensor, codes: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """Depth-decoder logits [N,K-1,V] of codebooks 1..K-1 for N frames, teacher-forced.

    ``hidden`` [N,D] is the backbone's hidden state at the position *before* each frame (the one whose
    codebook-0 logits predicted it), ``codes`` [N,K] the frames' codes.
    """
    k, v = model.args.num_codebooks, model.args.audio_vocab_size
    offsets = torch.arange(k - 1, device=codes.device) * v
    previous = model.audio_embeddings(codes[:, : k - 1] + offsets)  # [N,K-1,D]: codes 0..K-2
    x = torch.cat((hidden.unsqueeze(1).to(previous.dtype), previous), dim=1)  # [N,K,D]
    out = run_transformer(model.decoder, model.projection(x), checkpointing)  # [N,K,Ddec]
    head = model.audio_head.to(out.dtype)  # [K-1,Ddec,V]
    return torch.einsum("nkd,kdv->nkv", out[:, 1:], head)
