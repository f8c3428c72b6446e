"""A streaming Mimi decoder whose whole state is an explicit object of tensors.

transformers' ``MimiModel.decode`` decodes a whole utterance: its causal convolutions pad with zeros on
the left and its transposed convolutions drop their overlap, so calling it frame by frame gives clicks
at every frame boundary. :class:`MimiStreamingDecoder` runs the same modules (same weights, no copy)
one chunk of frames at a time, carrying what a later chunk needs in a :class:`MimiDecoderState`:

- the upsampling transposed convolution's overlap tail (``kernel - stride`` steps),
- the decoder transformer's keys and values of the last ``sliding_window - 1`` positions and the
  number of positions decoded so far (for the rotary embedding and the window mask),
- for each causal convolution of the SEANet decoder its last ``(kernel - 1) * dilation`` inputs,
- for each transposed convolution of the SEANet decoder its overlap tail (``kernel - stride`` steps).

Every tensor has a shape fixed by the config and the batch size (none grows with time when the config
has a sliding window), nothing is kept in the modules and a step never modifies the state it is given,
so states can be copied, compared, kept to rewind, and passed as inputs and outputs of an exported graph.

Time units: the codec runs at 12.5 frames/s; the upsampling doubles that to the transformer's 25
positions/s; the SEANet decoder turns each position into ``prod(upsampling_ratios)`` (960) samples.

The pieces that the streaming encoder (:mod:`csm_model.mimi_encoder_streaming`) runs too live here as
module-level functions: :class:`TensorState` (flat named tensors for graph I/O), :func:`kv_cache_shape`
and :func:`transformer_step` (the sliding-window transformer with explicit keys/values),
:func:`seanet_convs` and :func:`seanet_step` (SEANet layers with explicit conv contexts), and
:func:`conv_step` (one causal, possibly strided, conv).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiModel,
    MimiResnetBlock,
    MimiTransformerLayer,
    apply_rotary_pos_emb,
    repeat_kv,
)

from csm_model.hf_compat import mimi_decoder_parts


class TensorState:
    """Base of the streaming states (frozen dataclasses of tensors and tuples of tensors): flat named
    tensors for graph inputs and outputs. A tuple field ``f`` gives ``f.0``, ``f.1``, ..."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as flat named tensors (for graph export), in a fixed order."""
        out: dict[str, torch.Tensor] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                out.update({f"{f.name}.{i}": t for i, t in enumerate(value)})
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Self:
        """Inverse of :meth:`tensors`."""
        kwargs = {}
        for f in fields(cls):
            if f.name in tensors:
                kwargs[f.name] = tensors[f.name]
            else:
                prefix = f"{f.name}."
                items = sorted((int(k[len(prefix):]), v) for k, v in tensors.items() if k.startswith(prefix))
                kwargs[f.name] = tuple(v for _, v in items)
        return cls(**kwargs)


@dataclass(frozen=True)
class MimiDecoderState(TensorState):
    """Everything the streaming decoder remembers between calls. ``B`` batch, ``L`` transformer layers.

    Attributes:
        upsample_tail: [B, D, k-s] the upsampling conv-transpose's pending overlap (bias excluded).
        keys, values: [L, B, H_kv, W-1, head_dim] the decoder transformer's keys (rotary applied) and
            values of the last ``W-1`` positions, oldest first; ``W`` is ``config.sliding_window``.
            Slots before position 0 hold zeros and are masked out.
        position: [] int64, the number of transformer positions decoded so far (2 per codec frame).
        conv_context: per causal SEANet conv with a kernel wider than 1, in module order, its last
            ``(kernel-1)*dilation`` inputs [B, C_in, (k-1)*d] (zeros before the start; see :func:`seanet_convs`).
        convtr_tail: per SEANet conv-transpose, in module order, its pending overlap
            [B, C_out, k-s] (bias excluded).
    """

    upsample_tail: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    position: torch.Tensor
    conv_context: tuple[torch.Tensor, ...]
    convtr_tail: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.upsample_tail.shape[0]


def _check_streamable(config) -> None:
    """The streaming decoder reproduces the causal Mimi; say which setting prevents it otherwise."""
    problems = []
    if not config.use_causal_conv:
        problems.append("use_causal_conv=False (non-causal convs look ahead)")
    if config.trim_right_ratio != 1.0:
        problems.append(f"trim_right_ratio={config.trim_right_ratio} (only 1.0, all trimming on the right)")
    if config.pad_mode != "constant":
        problems.append(f"pad_mode={config.pad_mode!r} (only 'constant', zero left padding)")
    if problems:
        raise ValueError(
            "this Mimi config cannot be decoded in streaming mode: " + "; ".join(problems)
            + ". Use TorchMimi.decode for whole utterances, or a causal Mimi config (as kyutai/mimi)."
        )


class MimiStreamingDecoder:
    """Streams the decoder half of a ``MimiModel``: quantized codes -> 24 kHz PCM, chunk by chunk.

    Uses the model's own modules and weights; holds no state itself (see :class:`MimiDecoderState`).
    """

    def __init__(self, model: MimiModel):
        parts = mimi_decoder_parts(model)
        _check_streamable(model.config)
        self.model = model
        self.config = model.config
        self.upsample: MimiConvTranspose1d | None = parts.upsample
        self.transformer = parts.transformer
        self.seanet_layers = parts.seanet_layers
        self.window: int | None = self.config.sliding_window
        convs, convtrs = seanet_convs(self.seanet_layers)
        for conv in convs:
            if conv.conv.stride[0] != 1:
                raise ValueError(f"streaming supports stride-1 decoder convs only, got stride {conv.conv.stride[0]}")
        self._context_convs = [c for c in convs if context_size(c) > 0]
        self._convtrs = convtrs

    # ----------------------------------------------------------------------------------------- state
    def init_state(self, batch_size: int = 1) -> MimiDecoderState:
        """A fresh state for ``batch_size`` streams, on the model's device and in its dtype."""
        check_batch_size(batch_size)
        p = next(self.model.parameters())

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=p.device, dtype=p.dtype)

        upsample_tail = zeros(batch_size, self.config.hidden_size,
                              _overlap(self.upsample) if self.upsample is not None else 0)
        kv_shape = kv_cache_shape(self.config, batch_size)
        return MimiDecoderState(
            upsample_tail=upsample_tail,
            keys=zeros(*kv_shape),
            values=zeros(*kv_shape),
            position=torch.zeros((), dtype=torch.int64, device=p.device),
            conv_context=tuple(zeros(batch_size, c.in_channels, context_size(c)) for c in self._context_convs),
            convtr_tail=tuple(zeros(batch_size, t.conv.out_channels, _overlap(t)) for t in self._convtrs),
        )

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, codes: torch.Tensor, state: MimiDecoderState) -> tuple[torch.Tensor, MimiDecoderState]:
        """``codes`` [B,K,F] int64 (already validated) -> (pcm [B,1,F*frame_size], the next state)."""
        latents = self.model.quantizer.decode(codes)  # [B, D, F]
        upsample_tail = state.upsample_tail
        if self.upsample is not None:
            latents, upsample_tail = _convtr_step(self.upsample, latents, state.upsample_tail)
        hidden, keys, values, position = transformer_step(
            self.transformer, self.window, latents.transpose(1, 2), state.keys, state.values, state.position
        )
        x, contexts, tails = seanet_step(self.seanet_layers, hidden.transpose(1, 2), state.conv_context, state.convtr_tail)
        new_state = replace(
            state,
            upsample_tail=upsample_tail,
            keys=keys,
            values=values,
            position=position,
            conv_context=contexts,
            convtr_tail=tails,
        )
        return x, new_state


def stack_states(states: list[MimiDecoderState]) -> MimiDecoderState:
    """One state for several streams, each at its own position (``position`` [n]): their tensors
    concatenated along the batch. :func:`split_state` takes it apart again."""
    first = states[0]

    def cat(values: list[torch.Tensor], dim: int) -> torch.Tensor:
        return values[0] if len(values) == 1 else torch.cat(values, dim=dim)

    return MimiDecoderState(
        upsample_tail=cat([s.upsample_tail for s in states], 0),
        keys=cat([s.keys for s in states], 1),
        values=cat([s.values for s in states], 1),
        position=torch.cat([s.position.reshape(-1) for s in states]),
        conv_context=tuple(cat([s.conv_context[i] for s in states], 0) for i in range(len(first.conv_context))),
        convtr_tail=tuple(cat([s.convtr_tail[i] for s in states], 0) for i in range(len(first.convtr_tail))),
    )


def split_state(state: MimiDecoderState) -> list[MimiDecoderState]:
    """The streams of a :func:`stack_states` state, one state each (views, position [] each)."""
    position = state.position.reshape(-1).expand(state.batch_size)
    return [
        MimiDecoderState(
            upsample_tail=state.upsample_tail[i : i + 1],
            keys=state.keys[:, i : i + 1],
            values=state.values[:, i : i + 1],
            position=position[i],
            conv_context=tuple(t[i : i + 1] for t in state.conv_context),
            convtr_tail=tuple(t[i : i + 1] for t in state.convtr_tail),
        )
        for i in range(state.batch_size)
    ]


# --------------------------------------------------------------------------- shared with the encoder
def check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def kv_cache_shape(config, batch_size: int) -> tuple[int, int, int, int, int]:
    """[L, B, H_kv, W-1, head_dim]: the keys (or values) a streaming transformer of ``config`` keeps
    (``W`` = ``config.sliding_window``; no window keeps an empty cache that grows)."""
    cache = config.sliding_window - 1 if config.sliding_window is not None else 0
    return (config.num_hidden_layers, batch_size, config.num_key_value_heads, cache, config.head_dim)


def transformer_step(transformer, window: int | None, hidden: torch.Tensor, keys: torch.Tensor,
                     values: torch.Tensor, position: torch.Tensor):
    """A Mimi transformer (``MimiTransformerModel``) over new positions with explicit keys/values.

    ``hidden`` [B,T,D] holds positions ``position..position+T-1``; ``keys``/``values``
    [L,B,H_kv,C,head_dim] those of the ``C`` positions before (rotary applied, oldest first, zeros and
    masked out before position 0). Returns (hidden [B,T,D], keys, values, position + T), the caches
    keeping the last ``C`` positions (all of them when ``window`` is None). ``position`` is [] (every row
    at the same position) or [B] (each row at its own: streams that started at different times).
    """
    T = hidden.shape[1]
    cached = keys.shape[3]
    start = position.reshape(-1, 1)  # [1,1] or [B,1]
    position_ids = start + torch.arange(T, device=hidden.device)  # [1|B, T]
    cos, sin = transformer.rotary_emb(hidden, position_ids)
    # Absolute positions of the keys attended to: the cached slots, then the new positions.
    key_pos = (start - cached + torch.arange(cached + T, device=hidden.device))[:, None, :]  # [1|B, 1, C+T]
    query_pos = position_ids[:, :, None]  # [1|B, T, 1]
    allowed = (key_pos >= 0) & (key_pos <= query_pos)
    if window is not None:
        allowed &= key_pos > query_pos - window  # as transformers' sliding_window_overlay
    allowed = allowed[:, None]  # [1|B, 1, T, C+T]
    new_keys, new_values = [], []
    for i, layer in enumerate(transformer.layers):
        hidden, k, v = _layer_step(layer, hidden, cos, sin, keys[i], values[i], allowed)
        keep = k.shape[2] if window is None else cached  # no window: the cache grows
        new_keys.append(k[:, :, k.shape[2] - keep :])
        new_values.append(v[:, :, v.shape[2] - keep :])
    return hidden, torch.stack(new_keys), torch.stack(new_values), position + T


def seanet_convs(layers: Iterable[nn.Module]) -> tuple[list[MimiConv1d], list[MimiConvTranspose1d]]:
    """(causal convs, conv-transposes) of SEANet ``layers``, in the order :func:`seanet_step` runs them
    (inside a resnet block: its block's convs, then its shortcut conv)."""
    convs: list[MimiConv1d] = []
    convtrs: list[MimiConvTranspose1d] = []
    for layer in layers:
        if isinstance(layer, MimiResnetBlock):
            convs += [m for m in layer.block if isinstance(m, MimiConv1d)]
            if isinstance(layer.shortcut, MimiConv1d):
                convs.append(layer.shortcut)
        elif isinstance(layer, MimiConv1d):
            convs.append(layer)
        elif isinstance(layer, MimiConvTranspose1d):
            convtrs.append(layer)
    return convs, convtrs


def seanet_step(layers: Iterable[nn.Module], x: torch.Tensor, conv_context: tuple[torch.Tensor, ...],
                convtr_tail: tuple[torch.Tensor, ...] = (), started: torch.Tensor | None = None):
    """SEANet ``layers`` (encoder or decoder) over ``x`` [B,C,T] -> (y, new conv contexts, new tails).

    ``conv_context`` holds one tensor per conv of :func:`seanet_convs` with a context
    (:func:`context_size` > 0), ``convtr_tail`` one per conv-transpose, both in that order;
    ``started`` as in :func:`conv_step`.
    """
    contexts, tails = iter(conv_context), iter(convtr_tail)
    new_contexts: list[torch.Tensor] = []
    new_tails: list[torch.Tensor] = []

    def conv(module: MimiConv1d, x: torch.Tensor) -> torch.Tensor:
        if context_size(module) == 0:
            return module.conv(x)
        y, ctx = conv_step(module, x, next(contexts), started)
        new_contexts.append(ctx)
        return y

    for layer in layers:
        if isinstance(layer, MimiConv1d):
            x = conv(layer, x)
        elif isinstance(layer, MimiConvTranspose1d):
            x, tail = _convtr_step(layer, x, next(tails))
            new_tails.append(tail)
        elif isinstance(layer, MimiResnetBlock):
            residual = x
            for sub in layer.block:
                x = conv(sub, x) if isinstance(sub, MimiConv1d) else sub(x)
            shortcut = conv(layer.shortcut, residual) if isinstance(layer.shortcut, MimiConv1d) else residual
            x = shortcut + x
        else:  # stateless, pointwise in time (ELU)
            x = layer(x)
    return x, tuple(new_contexts), tuple(new_tails)


def _layer_step(layer: MimiTransformerLayer, hidden, cos, sin, past_k, past_v, allowed):
    """One transformer layer over new positions given cached keys/values -> (hidden, all keys, all values)."""
    attn = layer.self_attn
    B, T, _ = hidden.shape
    residual = hidden
    h = layer.input_layernorm(hidden)
    q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v], dim=2)
    out = F.scaled_dot_product_attention(
        q,
        repeat_kv(k, attn.num_key_value_groups),
        repeat_kv(v, attn.num_key_value_groups),
        attn_mask=allowed,
        scale=attn.scaling,
    )
    out = attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
    hidden = residual + layer.self_attn_layer_scale(out)
    hidden = hidden + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(hidden)))
    return hidden, k, v


def context_size(module: MimiConv1d) -> int:
    """Inputs a causal conv keeps between calls: ``(kernel - 1) * dilation + 1 - stride`` (transformers'
    ``padding_total``; ``(kernel - 1) * dilation`` for stride 1)."""
    conv = module.conv
    return (conv.kernel_size[0] - 1) * conv.dilation[0] + 1 - conv.stride[0]


def _overlap(module: MimiConvTranspose1d) -> int:
    """Output steps of a conv-transpose that the next input step still adds to: ``kernel - stride``."""
    return module.conv.kernel_size[0] - module.conv.stride[0]


def conv_step(module: MimiConv1d, x: torch.Tensor, context: torch.Tensor, started: torch.Tensor | None = None):
    """Causal conv of ``x`` [B,C,T] after ``context`` [B,C,P] -> (y [B,C',T/stride], last P inputs).

    ``T`` is a multiple of the stride (whole frames), so, with ``P`` = :func:`context_size`, the
    outputs are exactly those of transformers' conv over the whole signal (which then needs no right
    padding). A conv with ``pad_mode="replicate"`` (the encoder's downsampling) starts from its first
    input repeated, not zeros: ``started`` (a bool tensor []) False replaces ``context`` by that.
    """
    if module.pad_mode == "replicate":
        if started is None:
            raise ValueError("a replicate-padded conv needs the started flag of the stream")
        context = torch.where(started, context, x[..., :1].expand_as(context))
    elif module.pad_mode != "constant":
        raise ValueError(f"streaming supports pad_mode 'constant' and 'replicate', got {module.pad_mode!r}")
    full = torch.cat([context, x], dim=-1)
    return module.conv(full), full[..., full.shape[-1] - context.shape[-1] :]


def _convtr_step(module: MimiConvTranspose1d, x: torch.Tensor, tail: torch.Tensor):
    """Causal conv-transpose of ``x`` [B,C,T] -> (y [B,C',T*stride], new tail [B,C',k-s]).

    The full output of T inputs spans ``(T-1)*s + k`` steps; the first ``k-s`` receive the previous
    call's tail, the first ``T*s`` are final, the rest is the next call's tail. The causal Mimi trims
    the same ``k-s`` steps at the right end of the utterance, so the concatenated outputs match.
    """
    conv: nn.ConvTranspose1d = module.conv
    stride = conv.stride[0]
    y = F.conv_transpose1d(x, conv.weight, None, stride, groups=conv.groups)
    overlap = tail.shape[-1]
    y = torch.cat([y[..., :overlap] + tail, y[..., overlap:]], dim=-1)
    n = x.shape[-1] * stride
    out, new_tail = y[..., :n], y[..., n:]
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    return out, new_tail
