"""Training samples: an utterance to learn, with the earlier turns of its conversation as context.

A sample is laid out exactly like the prompt CSM generates from (:mod:`csm_core.generation.prompt`):
each context utterance as its ``[speaker]text`` frames, its audio frames and one all-zero end frame;
then the target's ``[speaker]text`` frames; then the target's audio frames and end frame, which are
what the loss scores (learning the end frame is learning when to stop).

Context: the utterances before the target in the same ``conversation`` (manifest order), newest
first, as many as fit in the model's position budget together with the target; the kept context is a
contiguous most-recent run (no gaps), as at inference. Utterances without a conversation are learned
without context. Every utterance is the target of exactly one sample.

The held-out split is by conversation (an utterance without one is its own group), so no eval target
is ever seen in training, not even as context.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csm_core.generation.prompt import audio_frames

from .batch import SequenceFrames
from .loss import choose_decoder_frames

__all__ = ["Utterance", "Sample", "build_samples", "split_samples", "sequence_frames"]


@dataclass(frozen=True)
class Utterance:
    """One encoded clip: ``text_ids`` [L] (``[speaker]text`` as the model's tokenizer encodes it) and
    Mimi ``codes`` [K,F]; ``where`` names its manifest row, ``conversation`` its group (None: alone)."""

    key: str
    where: str
    conversation: str | None
    text_ids: torch.Tensor
    codes: torch.Tensor

    @property
    def frames(self) -> int:
        return self.codes.shape[1]

    @property
    def positions(self) -> int:
        """Positions the utterance takes in a sequence: its text tokens, its frames and an end frame."""
        return len(self.text_ids) + self.frames + 1


@dataclass(frozen=True)
class Sample:
    """``target`` and ``context`` (oldest first) are indices into the utterance list; ``length`` the
    sequence's positions."""

    target: int
    context: tuple[int, ...]
    length: int


def build_samples(utterances: Sequence[Utterance], max_positions: int) -> list[Sample]:
    """One :class:`Sample` per utterance (see the module docstring). An utterance that alone exceeds
    ``max_positions`` is a ValueError (the data preparation reports and removes those first)."""
    samples = []
    earlier: dict[str, list[int]] = {}
    for index, utterance in enumerate(utterances):
        if utterance.positions > max_positions:
            raise ValueError(f"{utterance.where}: {utterance.positions} positions exceed the budget of {max_positions}")
        context: list[int] = []
        length = utterance.positions
        if utterance.conversation is not None:
            history = earlier.setdefault(utterance.conversation, [])
            for previous in reversed(history):
                cost = utterances[previous].positions
                if length + cost > max_positions:
                    break
                context.insert(0, previous)
                length += cost
            history.append(index)
        samples.append(Sample(index, tuple(context), length))
    return samples


def split_samples(
    samples: Sequence[Sample], utterances: Sequence[Utterance], eval_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, eval): whole conversations drawn at random (``seed``) into eval, about ``eval_fraction``
    of the groups, at least one when ``eval_fraction > 0`` and there are two groups or more, never all."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        conversation = utterances[sample.target].conversation
        group = f"conversation:{conversation}" if conversation is not None else f"utterance:{sample.target}"
        groups.setdefault(group, []).append(sample)
    names = list(groups)
    count = 0
    if eval_fraction > 0 and len(names) >= 2:
        count = min(len(names) - 1, max(1, round(eval_fraction * len(names))))
    held_out = set(random.Random(seed).sample(names, count))
    train = [s for name in names if name not in held_out for s in groups[name]]
    evaluation = [s for name in names if name in held_out for s in groups[name]]
    return sorted(train, key=lambda s: s.target), sorted(evaluation, key=lambda s: s.target)


def _text_frames(text_ids: torch.Tensor, num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(text_ids), num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:, -1], mask[:, -1] = text_ids, True
    return tokens, mask


def sequence_frames(
    sample: Sample,
    utterances: Sequence[Utterance],
    num_codebooks: int,
    ratio: float,
    generator: torch.Generator,
) -> SequenceFrames:
    """The frames of ``sample``; the depth decoder's frames are drawn with ``generator`` (``ratio``)."""
    parts = []
    for index in sample.context:
        utterance = utterances[index]
        parts.append(_text_frames(utterance.text_ids, num_codebooks))
        parts.append(audio_frames(utterance.codes, num_codebooks))
    target = utterances[sample.target]
    parts.append(_text_frames(target.text_ids, num_codebooks))
    prefix = sum(t.shape[0] for t, _ in parts)
    parts.append(audio_frames(target.codes, num_codebooks))
    tokens = torch.cat([t for t, _ in parts])
    mask = torch.cat([m for _, m in parts])
    targets = torch.zeros(tokens.shape[0], dtype=torch.bool)
    targets[prefix:] = True
    return SequenceFrames(tokens, mask, targets, choose_decoder_frames(targets, ratio, generator))
