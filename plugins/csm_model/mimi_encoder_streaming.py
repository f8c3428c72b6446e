"""A streaming Mimi encoder whose whole state is an explicit object of tensors.

transformers' ``MimiModel.encode`` encodes a whole clip; its streaming mode keeps lists of tensors
that it updates in place and sizes its padding by the input length, which neither exporter can turn
into a graph. :class:`MimiStreamingEncoder` runs the same modules (same weights, no copy) over whole
frames (``frame_size`` = 1920 samples at 24 kHz), one chunk at a time, carrying what a later chunk
needs in a :class:`MimiEncoderStreamState`:

- for each causal convolution of the SEANet encoder (strided downsampling convs included) its last
  ``(kernel - 1) * dilation + 1 - stride`` inputs (zeros before the start, the conv's ``pad_mode``),
- the encoder transformer's keys and values of the last ``sliding_window - 1`` positions and the
  number of positions encoded so far (for the rotary embedding and the window mask),
- the last ``kernel - stride`` inputs of the ``downsample`` conv (25 -> 12.5 Hz). It pads with
  ``pad_mode="replicate"``: before the first chunk its left context is the first input repeated, not
  zeros; the step takes it from its input while ``position`` is 0 (nothing encoded yet).

The quantizer works frame by frame and needs no state. Every tensor has a shape fixed by the config
and the batch size, nothing is kept in the modules and a step never modifies the state it is given,
so states can be copied, kept to rewind, and passed as inputs and outputs of an exported graph
(:func:`csm_export.mimi_encoder.export_mimi_encoder_step`).

Whole frames make this exact: every strided conv then sees a multiple of its stride, so
transformers' whole-clip encode adds no right padding either, and concatenated codes equal
``TorchMimi.encode`` of the concatenated PCM (which pads the end of a clip with zeros to whole frames).

Time units: the SEANet encoder turns ``prod(upsampling_ratios)`` (960) samples into one transformer
position (25 positions/s); the downsampling halves that to the codec's 12.5 frames/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiModel

from csm_model.hf_compat import TransformersMismatch
from csm_model.mimi_streaming import (
    TensorState,
    check_batch_size,
    context_size,
    conv_step,
    kv_cache_shape,
    seanet_convs,
    seanet_step,
    transformer_step,
)

__all__ = ["MimiEncoderParts", "MimiEncoderStreamState", "MimiStreamingEncoder", "mimi_encoder_parts"]


@dataclass(frozen=True)
class MimiEncoderStreamState(TensorState):
    """Everything the streaming encoder remembers between calls. ``B`` batch, ``L`` transformer layers.

    Attributes:
        keys, values: [L, B, H_kv, W-1, head_dim] the encoder transformer's keys (rotary applied) and
            values of the last ``W-1`` positions, oldest first; ``W`` is the ``sliding_window``.
            Slots before position 0 hold zeros and are masked out.
        position: [] int64, the number of transformer positions encoded so far (2 per codec frame);
            0 means nothing encoded yet (replicate-padded convs then start from their first input).
        conv_context: per causal conv with a context (:func:`~csm_model.mimi_streaming.context_size`
            > 0), SEANet encoder convs in module order then ``downsample``, its last inputs
            [B, C_in, (k-1)*d+1-stride].
    """

    keys: torch.Tensor
    values: torch.Tensor
    position: torch.Tensor
    conv_context: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


class MimiEncoderParts(NamedTuple):
    """The modules of a ``MimiModel``'s encoder half, in the order they run before the quantizer."""

    seanet_layers: list  # the SEANet encoder's layers (MimiConv1d, MimiResnetBlock, ELU)
    transformer: Any  # MimiTransformerModel (has .rotary_emb, .layers and .config)
    downsample: Any  # MimiConv1d (stride 2, replicate padding), or None when the config has none


def mimi_encoder_parts(model) -> MimiEncoderParts:
    """Where this transformers release keeps Mimi's encoder modules (the counterpart of
    :func:`csm_model.hf_compat.mimi_decoder_parts`); ``ValueError`` when the model has no encoder.

    5.21 and later: ``model.encoder.{encoder_seanet, encoder_transformer, downsample}``
    (``MimiEncoderModel``); earlier releases keep them side by side on ``MimiModel``.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError("the MimiModel has no encoder (it was built with encoder_config=None)")
    seanet = getattr(encoder, "encoder_seanet", None)
    if seanet is not None:  # MimiEncoderModel: SEANet, transformer and downsample in one sub-model
        return MimiEncoderParts(list(seanet.layers), encoder.encoder_transformer, encoder.downsample)
    children = dict(model.named_children())
    if "encoder_transformer" in children and hasattr(encoder, "layers"):
        return MimiEncoderParts(list(encoder.layers), children["encoder_transformer"], children.get("downsample"))
    raise TransformersMismatch("where MimiModel keeps its encoder transformer",
                               ("encoder.encoder_transformer", "encoder_transformer"))


def _check_streamable(convs: list[MimiConv1d]) -> None:
    """Every conv must be causal and pad with zeros or by replication; say which one is not."""
    problems = []
    for conv in convs:
        if not conv.causal:
            problems.append("use_causal_conv=False (non-causal convs look ahead)")
        elif conv.pad_mode not in ("constant", "replicate"):
            problems.append(f"pad_mode={conv.pad_mode!r} (only 'constant' and 'replicate')")
    if problems:
        raise ValueError(
            "this Mimi config cannot be encoded in streaming mode: " + "; ".join(sorted(set(problems)))
            + ". Use TorchMimi.encode for whole clips, or a causal Mimi config (as kyutai/mimi)."
        )


class MimiStreamingEncoder:
    """Streams the encoder half of a ``MimiModel``: 24 kHz PCM -> codes, whole frames at a time.

    Uses the model's own modules and weights; holds no state itself (see :class:`MimiEncoderStreamState`).
    ``num_codebooks`` (default: all of the config's quantizers) is the ``K`` of the codes returned.
    """

    def __init__(self, model: MimiModel, num_codebooks: int | None = None):
        parts = mimi_encoder_parts(model)
        config = model.config
        low, high = config.num_semantic_quantizers, config.num_quantizers
        num_codebooks = high if num_codebooks is None else num_codebooks
        if not isinstance(num_codebooks, int) or isinstance(num_codebooks, bool) or not low <= num_codebooks <= high:
            raise ValueError(f"num_codebooks must be an int in [{low}, {high}] for this Mimi, got {num_codebooks!r}")
        self.model = model
        self.num_codebooks = num_codebooks
        self.seanet_layers = parts.seanet_layers
        self.transformer = parts.transformer
        self.downsample: MimiConv1d | None = parts.downsample
        self.transformer_config = parts.transformer.config
        self.window: int | None = self.transformer_config.sliding_window
        convs, convtrs = seanet_convs(self.seanet_layers)
        if convtrs:
            raise ValueError("a Mimi SEANet encoder has no transposed convs; this model is not one")
        _check_streamable(convs + ([self.downsample] if self.downsample is not None else []))
        self._context_convs = [c for c in convs if context_size(c) > 0]
        self._seanet_contexts = len(self._context_convs)
        if self.downsample is not None and context_size(self.downsample) > 0:
            self._context_convs.append(self.downsample)
        strides = [c.conv.stride[0] for c in convs] + ([self.downsample.conv.stride[0]] if self.downsample else [])
        self.frame_size: int = math.prod(strides)
        """Samples per codec frame: the product of the conv strides (1920 for every Mimi preset)."""
        if self.frame_size != config.frame_size:
            raise ValueError(f"the encoder's strides make frames of {self.frame_size} samples, "
                             f"but the config says frame_size={config.frame_size}")

    # ----------------------------------------------------------------------------------------- state
    def init_state(self, batch_size: int = 1) -> MimiEncoderStreamState:
        """A fresh state for ``batch_size`` streams, on the model's device and in its dtype."""
        check_batch_size(batch_size)
        p = next(self.model.parameters())

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=p.device, dtype=p.dtype)

        kv_shape = kv_cache_shape(self.transformer_config, batch_size)
        return MimiEncoderStreamState(
            keys=zeros(*kv_shape),
            values=zeros(*kv_shape),
            position=torch.zeros((), dtype=torch.int64, device=p.device),
            conv_context=tuple(zeros(batch_size, c.in_channels, context_size(c)) for c in self._context_convs),
        )

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, pcm: torch.Tensor, state: MimiEncoderStreamState) -> tuple[torch.Tensor, MimiEncoderStreamState]:
        """``pcm`` [B,1,F*frame_size] -> (codes [B,K,F] int64, the next state); ``state`` is not modified."""
        if pcm.ndim != 3 or pcm.shape[1] != 1 or pcm.shape[2] == 0 or pcm.shape[2] % self.frame_size:
            raise ValueError(
                f"pcm must be [batch, 1, frames * {self.frame_size}] (whole frames, pad the end of a clip with "
                f"zeros), got {tuple(pcm.shape)}"
            )
        if pcm.shape[0] != state.batch_size:
            raise ValueError(f"pcm has batch size {pcm.shape[0]} but the state was made for {state.batch_size}")
        started = state.position > 0
        n = self._seanet_contexts
        x, contexts, _ = seanet_step(self.seanet_layers, pcm, state.conv_context[:n], (), started)
        hidden, keys, values, position = transformer_step(
            self.transformer, self.window, x.transpose(1, 2), state.keys, state.values, state.position
        )
        latents = hidden.transpose(1, 2)
        if self.downsample is not None:
            if context_size(self.downsample) > 0:
                latents, context = conv_step(self.downsample, latents, state.conv_context[n], started)
                contexts += (context,)
            else:
                latents = self.downsample.conv(latents)
        codes = self.model.quantizer.encode(latents, self.num_codebooks).transpose(0, 1)
        new_state = MimiEncoderStreamState(keys=keys, values=values, position=position, conv_context=contexts)
        return codes.to(torch.int64), new_state
