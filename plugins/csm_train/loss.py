"""CSM's training loss, with compute amortization of the depth decoder.

For every *target frame* (the audio frames of the utterance being learned and its all-zero end frame):

- the **backbone** is scored on codebook 0: cross-entropy of ``codebook0_head`` at the position before
  the frame against the frame's code 0;
- the **depth decoder** is scored on codebooks 1..K-1 on a random fraction of the target frames only
  (``ratio``, default 1/16, as CSM's authors trained it; 1.0 scores every frame).

Text frames and context frames are never scored. The loss is ``mean(backbone CE) + mean(decoder CE)``,
each mean over what was scored: the same number transformers' ``CsmForConditionalGeneration`` returns
for the same batch with labels -100 (not scored) and -101 (backbone only) on the frames.

:func:`loss_sums` returns *sums and counts* rather than means so that a step split over gradient
accumulation and over data-parallel processes can divide by the step's global counts: the gradient is
then the same however the step is split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from csm_model.model import Csm

from .batch import Batch
from .forward import backbone_hidden, decoder_logits

__all__ = ["LossSums", "decoder_frame_count", "choose_decoder_frames", "loss_sums"]


def decoder_frame_count(num_frames: int, ratio: float) -> int:
    """How many of ``num_frames`` target frames the depth decoder is scored on: ``ceil(ratio * n)``,
    at least 1 (every utterance teaches the decoder something), at most ``n``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"amortization ratio {ratio!r} must be in (0, 1]")
    if num_frames <= 0:
        return 0
    return min(num_frames, max(1, math.ceil(ratio * num_frames - 1e-9)))


def choose_decoder_frames(targets: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A bool mask [T] choosing :func:`decoder_frame_count` of the ``True`` positions of ``targets`` [T]
    uniformly at random (``torch.randperm`` with ``generator``)."""
    positions = targets.nonzero().flatten()
    count = decoder_frame_count(len(positions), ratio)
    chosen = positions[torch.randperm(len(positions), generator=generator)[:count]]
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[chosen] = True
    return mask


@dataclass
class LossSums:
    """Summed cross-entropies (tensors that carry gradients) and how many codes each sums over."""

    backbone: torch.Tensor
    decoder: torch.Tensor
    backbone_count: int
    decoder_count: int

    def mean(self) -> torch.Tensor:
        """``backbone / backbone_count + decoder / decoder_count`` (this batch alone)."""
        return self.backbone / max(self.backbone_count, 1) + self.decoder / max(self.decoder_count, 1)


def loss_sums(model: Csm, batch: Batch, checkpointing: bool = False) -> LossSums:
    """Cross-entropy sums of ``batch`` under ``model`` (see the module docstring).

    ``batch.targets`` [B,T] marks the frames the backbone is scored on (never position 0: a frame is
    predicted from the position before it), ``batch.decoder`` [B,T] the subset the depth decoder is
    scored on. Logits are computed in float32.
    """
    k = model.args.num_codebooks
    hidden = backbone_hidden(model, batch.tokens, batch.mask, checkpointing)  # [B,T,D]
    before = hidden[:, :-1]  # position t-1 predicts frame t
    targets, decoder = batch.targets[:, 1:], batch.decoder[:, 1:]
    codes = batch.tokens[:, 1:, :k]

    c0_logits = model.codebook0_head(before[targets]).float()  # [M,V]
    backbone = F.cross_entropy(c0_logits, codes[targets][:, 0], reduction="sum")

    frames = codes[decoder]  # [N,K]
    logits = decoder_logits(model, before[decoder], frames, checkpointing).float()  # [N,K-1,V]
    decoder_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), frames[:, 1:].reshape(-1), reduction="sum")
    return LossSums(backbone, decoder_sum, int(targets.sum()), int(frames.shape[0]) * (k - 1))
