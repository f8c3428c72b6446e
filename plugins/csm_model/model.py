"""Sesame's Conversational Speech Model (CSM) in plain PyTorch.

CSM predicts Mimi audio codes one frame (12.5 Hz) at a time:

- the **backbone**, a Llama-3.2-style transformer over *frame embeddings* (each frame is the sum of the
  embeddings of its K audio codes, or of one text token), predicts codebook 0 of the next frame with
  ``codebook0_head``;
- the **depth decoder**, a smaller transformer of the same kind, then predicts codebooks 1..K-1 of that
  frame from the backbone's last hidden state and the codes so far, one per step, codebook ``i`` through
  ``audio_head[i-1]``.

Both transformers keep a static key/value cache written *by position* (``scatter_``) and attend over the
whole cache under a causal mask gathered from a precomputed table, so a step has no data-dependent shapes
and can be captured by ``torch.compile(mode="reduce-overhead")`` / CUDA graphs.

Parameter names follow this module (``backbone.layers.0.attn.q_proj.weight``); :mod:`csm_model.convert`
maps them to and from the transformers and Sesame checkpoint layouts. Queries and keys use the
"rotate-half" RoPE layout of transformers (Sesame's torchtune checkpoints use interleaved pairs; the
conversion permutes them).

Shapes: ``B`` batch, ``T`` positions, ``D`` backbone width, ``V`` audio vocabulary, ``K`` codebooks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CsmArgs",
    "Csm",
    "Transformer",
    "random_csm",
    "rope_inverse_frequencies",
]

ROPE_TYPES = ("llama3", "default")


@dataclass(frozen=True)
class CsmArgs:
    """Every number that shapes a CSM. Defaults are Sesame's CSM-1B.

    ``*_head_dim`` is ``dim // heads``. RoPE uses ``rope_theta`` and, when ``rope_type == "llama3"``, the
    Llama 3 frequency scaling (``rope_factor``, ``rope_low_freq_factor``, ``rope_high_freq_factor``,
    ``rope_original_max_position_embeddings``), for both transformers. ``max_seq_len`` is the backbone's
    position budget (its KV-cache length); the depth decoder's cache holds ``num_codebooks`` positions.
    """

    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051
    num_codebooks: int = 32
    backbone_layers: int = 16
    backbone_dim: int = 2048
    backbone_heads: int = 32
    backbone_kv_heads: int = 8
    backbone_mlp_dim: int = 8192
    decoder_layers: int = 4
    decoder_dim: int = 1024
    decoder_heads: int = 8
    decoder_kv_heads: int = 2
    decoder_mlp_dim: int = 8192
    rope_theta: float = 500_000.0
    rope_type: str = "llama3"
    rope_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    max_seq_len: int = 2048
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rope_type":
                if value not in ROPE_TYPES:
                    raise ValueError(f"CsmArgs.rope_type={value!r}: choose one of {ROPE_TYPES}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"CsmArgs.{f.name}={value!r}: must be a positive number")
            elif f.type == "int" and not isinstance(value, int):
                raise ValueError(f"CsmArgs.{f.name}={value!r}: must be an integer")
        if self.num_codebooks < 2:
            raise ValueError(f"CsmArgs.num_codebooks={self.num_codebooks}: CSM needs at least 2 codebooks")
        for part in ("backbone", "decoder"):
            dim, heads, kv_heads = (getattr(self, f"{part}_{n}") for n in ("dim", "heads", "kv_heads"))
            if dim % heads:
                raise ValueError(f"CsmArgs.{part}_dim={dim} is not divisible by {part}_heads={heads}")
            if heads % kv_heads:
                raise ValueError(f"CsmArgs.{part}_heads={heads} is not divisible by {part}_kv_heads={kv_heads}")
            if (dim // heads) % 2:
                raise ValueError(
                    f"CsmArgs: {part} head dim {dim // heads} (= {part}_dim / {part}_heads) must be even for RoPE"
                )

    @property
    def backbone_head_dim(self) -> int:
        return self.backbone_dim // self.backbone_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.decoder_dim // self.decoder_heads

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CsmArgs:
        """Build from :meth:`to_dict` output; unknown keys are an error (they would be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CsmArgs.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def rope_inverse_frequencies(args: CsmArgs, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim/2] float32, with Llama 3 scaling when ``args.rope_type == "llama3"``."""
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if args.rope_type == "default":
        return inv_freq.float()
    old_len = args.rope_original_max_position_embeddings
    low_wavelen = old_len / args.rope_low_freq_factor
    high_wavelen = old_len / args.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / args.rope_factor, inv_freq)
    smooth = (old_len / wavelen - args.rope_low_freq_factor) / (args.rope_high_freq_factor - args.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / args.rope_factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` [B,H,T,head_dim] with ``cos``/``sin`` broadcastable to it."""
    return x * cos + _rotate_half(x) * sin


def grouped_attention(q, k_cache, v_cache, mask, scale: float | None = None) -> torch.Tensor:
    """Grouped-query attention of ``q`` [B,H,T,hd] over caches [B,H_kv,L,hd] (``mask`` [B,1,T,L] bool
    or None) -> [B,H,T,hd]. Each cache head serves ``H / H_kv`` query heads; ``scale`` None is 1/sqrt(hd)."""
    b, heads, t, hd = q.shape
    kv_heads = k_cache.shape[1]
    groups = heads // kv_heads
    if groups > 1 and not torch.compiler.is_exporting() and t == 1:
        # A one-position step (every generation step): the query heads of one cache head become rows
        # of that head's query [B,H_kv,groups,hd], so the caches are read as they are, not copied whole.
        # (Exported graphs keep the plain form below: dynamic-length export cannot take this branch.)
        q = q.reshape(b, kv_heads, groups, hd)
        if mask is not None:
            mask = mask.expand(mask.shape[0], mask.shape[1], groups, mask.shape[-1])
        out = F.scaled_dot_product_attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype), attn_mask=mask, scale=scale)
        return out.reshape(b, heads, 1, hd)
    if groups > 1:
        k_cache = k_cache.repeat_interleave(groups, dim=1)
        v_cache = v_cache.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(
        q, k_cache.to(q.dtype), v_cache.to(q.dtype), attn_mask=mask, scale=scale
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention over a static KV cache [B, kv_heads, L, head_dim]."""

    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.register_buffer("k_cache", None, persistent=False)  # [B, kv_heads, L, head_dim] after setup
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x, cos, sin, mask, positions):
        """``x`` [B,T,dim], ``cos``/``sin`` [B,1,T,head_dim], ``mask`` [B,1,T,L] bool, ``positions`` [B,T]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Write this call's keys/values at their positions (the first b rows of the cache).
        index = positions[:, None, :, None].expand(b, self.kv_heads, t, self.head_dim)
        k_cache = self.k_cache[:b].scatter_(2, index, k.to(self.k_cache.dtype))
        v_cache = self.v_cache[:b].scatter_(2, index, v.to(self.v_cache.dtype))
        out = grouped_attention(q, k_cache, v_cache, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads, kv_heads)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x, cos, sin, mask, positions):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, positions)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Pre-norm Llama transformer (no embeddings, no head) with a static KV cache and a final norm.

    The part may run in a lower precision than the rest of the model (:meth:`Csm.set_part_dtypes`): its
    input is cast to the dtype of its own weights (:attr:`dtype`) and its normed output back to the
    input's dtype, so embeddings, heads and sampling around it keep theirs. The KV cache defaults to the
    part's dtype.
    """

    def __init__(self, args: CsmArgs, part: str) -> None:
        super().__init__()
        self.args, self.part = args, part
        dim, heads, kv_heads, mlp_dim, layers = (
            getattr(args, f"{part}_{n}") for n in ("dim", "heads", "kv_heads", "mlp_dim", "layers")
        )
        self.layers = nn.ModuleList(Block(dim, heads, kv_heads, mlp_dim, args.norm_eps) for _ in range(layers))
        self.norm = RMSNorm(dim, args.norm_eps)
        self.max_len = args.max_seq_len if part == "backbone" else args.num_codebooks
        self.head_dim = dim // heads
        self.batch_size = 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype this part computes in: that of its weights."""
        return self.norm.weight.dtype

    def setup_cache(self, batch_size: int, dtype: torch.dtype | None, device: torch.device) -> None:
        """Allocate the KV cache [batch_size, kv_heads, max_len, head_dim] (``dtype`` None: :attr:`dtype`),
        RoPE and causal-mask tables."""
        dtype = dtype or self.dtype
        for block in self.layers:
            shape = (batch_size, block.attn.kv_heads, self.max_len, self.head_dim)
            block.attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            block.attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        inv_freq = rope_inverse_frequencies(self.args, self.head_dim).to(device)
        angles = torch.outer(torch.arange(self.max_len, device=device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        causal = torch.tril(torch.ones(self.max_len, self.max_len, dtype=torch.bool, device=device))
        self.register_buffer("causal_mask", causal, persistent=False)
        self.batch_size = batch_size

    def reset_cache(self) -> None:
        for block in self.layers:
            if block.attn.k_cache is not None:
                block.attn.k_cache.zero_()
                block.attn.v_cache.zero_()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,dim], ``positions`` [B,T] int64 -> normed hidden states [B,T,dim]."""
        if self.batch_size == 0:
            raise RuntimeError(f"Csm {self.part}: no KV cache; call Csm.setup_caches(batch_size, dtype, device) first")
        if x.shape[0] > self.batch_size:
            raise ValueError(
                f"Csm {self.part}: batch of {x.shape[0]} exceeds the cache's batch size {self.batch_size}; "
                "call Csm.setup_caches with a larger batch_size"
            )
        out_dtype = x.dtype
        x = x.to(self.dtype)
        cos = self.rope_cos[positions].to(x.dtype).unsqueeze(1)
        sin = self.rope_sin[positions].to(x.dtype).unsqueeze(1)
        mask = self.causal_mask[positions].unsqueeze(1)
        for block in self.layers:
            x = block(x, cos, sin, mask, positions)
        return self.norm(x).to(out_dtype)


class Csm(nn.Module):
    """The whole CSM: embeddings, backbone + ``codebook0_head``, projection, depth decoder + ``audio_head``."""

    def __init__(self, args: CsmArgs) -> None:
        super().__init__()
        self.args = args
        d, v, k = args.backbone_dim, args.audio_vocab_size, args.num_codebooks
        self.text_embeddings = nn.Embedding(args.text_vocab_size, d)
        self.audio_embeddings = nn.Embedding(k * v, d)  # codebook c, code x -> row c*V + x
        self.backbone = Transformer(args, "backbone")
        self.codebook0_head = nn.Linear(d, v, bias=False)
        self.projection = nn.Linear(d, args.decoder_dim, bias=False)
        self.decoder = Transformer(args, "decoder")
        self.audio_head = nn.Parameter(torch.empty(k - 1, args.decoder_dim, v))  # codebook i uses [i-1]

    def set_part_dtypes(self, backbone: torch.dtype, decoder: torch.dtype) -> Csm:
        """Run the backbone's and the depth decoder's transformer layers (and final norms) in these dtypes.

        Everything else (embeddings, ``codebook0_head``, ``projection``, ``audio_head``) keeps its dtype,
        so logits and sampling stay in it (float32 for a selective-precision plan). Drops the KV caches:
        call :meth:`setup_caches` afterwards. Returns ``self``.
        """
        plan = (("backbone", backbone), ("decoder", decoder))
        for name, dtype in plan:  # all checked before anything changes
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"set_part_dtypes: {name}={dtype!r} must be a floating-point torch.dtype")
        for name, dtype in plan:
            part: Transformer = getattr(self, name)
            part.to(dtype=dtype)
            for block in part.layers:
                block.attn.k_cache = block.attn.v_cache = None
            part.batch_size = 0
        return self

    def part_dtypes(self) -> dict[str, torch.dtype]:
        """``{"backbone": dtype, "decoder": dtype, "heads": dtype}``: what each part computes in."""
        return {"backbone": self.backbone.dtype, "decoder": self.decoder.dtype, "heads": self.codebook0_head.weight.dtype}

    def setup_caches(self, batch_size: int, dtype: torch.dtype | None = None, device=None) -> None:
        """Allocate both static KV caches (default dtype: each part's own; default device: the parameters')."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"setup_caches: batch_size={batch_size!r} must be a positive integer")
        p = self.codebook0_head.weight
        device = torch.device(device) if device is not None else p.device
        self.backbone.setup_cache(batch_size, dtype, device)
        self.decoder.setup_cache(batch_size, dtype, device)

    def backbone_logits(self, embeds: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds`` [B,T,D] at ``positions`` [B,T] -> (last hidden [B,D], codebook-0 logits [B,V])."""
        hidden = self.backbone(embeds, positions)[:, -1]
        return hidden, self.codebook0_head(hidden)

    def decoder_logits(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,D] (backbone width) at ``positions`` [B,T] -> logits [B,V] of codebook ``positions[:, -1]``."""
        hidden = self.decoder(self.projection(x), positions)[:, -1]  # [B, Ddec]
        last = positions[:, -1]
        if hidden.device.type == "cpu" and not torch.compiler.is_compiling() and bool((last == last[0]).all()):
            # Every row at the same codebook (as in generation): one matmul with that head, instead of
            # gathering a copy of the head per row. (Not on a GPU or under torch.compile, where the
            # check itself would cost a synchronization or break the graph.)
            return hidden @ self.audio_head[int(last[0]) - 1].to(hidden.dtype)
        head = self.audio_head[last - 1]  # [B, Ddec, V]
        return torch.bmm(hidden.unsqueeze(1), head.to(hidden.dtype)).squeeze(1)


def random_csm(args: CsmArgs, seed: int = 0, *, dtype: torch.dtype = torch.float32, device="cpu") -> Csm:
    """A ``Csm`` with random weights that depend only on ``(args, seed)``.

    Weights are drawn on the CPU in float32 (normal, std 0.02; norms 1), so every device and dtype gets the
    same values, then moved to ``device``/``dtype``. Caches are not allocated.
    """
    with torch.device("meta"):
        model = Csm(args)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    return model.to(device=device, dtype=dtype).eval()
