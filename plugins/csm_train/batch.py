"""A padded batch of training sequences: frame tokens, their mask, and which frames are scored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SequenceFrames", "Batch", "collate"]


@dataclass(frozen=True)
class SequenceFrames:
    """One training sequence: ``tokens``/``mask`` [T,K+1] (see :mod:`csm_core.generation.prompt`),
    ``targets`` [T] bool (frames the backbone is scored on) and ``decoder`` [T] bool (the subset the
    depth decoder is scored on)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    decoder: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class Batch:
    """Sequences right-padded to the longest: ``tokens``/``mask`` [B,T,K+1], ``targets``/``decoder`` [B,T].

    Padding frames have an all-False mask (they embed to zeros) and are never scored; causal attention
    keeps them from affecting the real positions before them.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    decoder: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.tokens, self.mask, self.targets, self.decoder)))

    @property
    def backbone_count(self) -> int:
        """Codes the backbone is scored on (one per target frame)."""
        return int(self.targets.sum())

    def decoder_count(self, num_codebooks: int) -> int:
        """Codes the depth decoder is scored on (K-1 per chosen frame)."""
        return int(self.decoder.sum()) * (num_codebooks - 1)


def collate(sequences: Sequence[SequenceFrames]) -> Batch:
    """Right-pad ``sequences`` into one :class:`Batch`."""
    if not sequences:
        raise ValueError("collate: no sequences")
    length = max(len(s) for s in sequences)
    width = sequences[0].tokens.shape[1]
    b = len(sequences)
    tokens = torch.zeros(b, length, width, dtype=torch.long)
    mask = torch.zeros(b, length, width, dtype=torch.bool)
    targets = torch.zeros(b, length, dtype=torch.bool)
    decoder = torch.zeros(b, length, dtype=torch.bool)
    for row, s in enumerate(sequences):
        n = len(s)
        tokens[row, :n], mask[row, :n], targets[row, :n], decoder[row, :n] = s.tokens, s.mask, s.targets, s.decoder
    return Batch(tokens, mask, targets, decoder)
