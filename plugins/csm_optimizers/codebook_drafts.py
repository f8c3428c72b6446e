"""Cheap guesses of a frame's codebooks 1..K-1 for the ``speculative-codebooks`` optimizer.

A drafter never decides a code: the depth decoder verifies every draft (:mod:`csm_optimizers.speculative_frame`),
so a bad guess costs time, never a different result. A drafter has three methods:

- ``draft(prefix, start, count) -> codes [B,m] int64 | None``: guesses for codebooks ``start..start+m-1``
  (``m <= count``; None or ``m = 0``: no guess), given the codes already decided for codebooks
  ``0..start-1`` (``prefix``, a list of ``start`` tensors [B]). Every guess must be a code of the model's
  audio vocabulary (``0 <= code < V``);
- ``observe(frame)``: the frame [B,K] just decoded (what later drafts learn from);
- ``reset()``: forget everything (the optimizer calls it when a tts stage run starts, so drafts come
  from the utterance being spoken).

Two drafters (``[options.speculative-codebooks] draft``):

- ``previous`` (:class:`PreviousFrameDrafter`): codebook ``c`` of this frame is guessed as codebook ``c``
  of the previous frame of the same row; nothing for an utterance's first frame;
- ``bigram`` (:class:`BigramDrafter`): a table of codebook transitions built during the utterance,
  ``table[c, x]`` = the code that followed code ``x`` of codebook ``c-1`` at codebook ``c`` the last time
  ``x`` was seen there; a draft chains through it from the last decided code, and where the table has no
  entry it takes the previous frame's code (as ``previous`` does).
"""

from __future__ import annotations

import torch

__all__ = ["DRAFTERS", "PreviousFrameDrafter", "BigramDrafter", "make_drafter"]

DRAFTERS = ("bigram", "previous")


class PreviousFrameDrafter:
    """Guesses codebook ``c`` as the previous frame's codebook ``c`` (same row)."""

    name = "previous"

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None  # [B,K] the last frame observed

    def reset(self) -> None:
        self.last = None

    def observe(self, frame: torch.Tensor) -> None:
        self.last = frame.detach().clone()

    def draft(self, prefix: list[torch.Tensor], start: int, count: int) -> torch.Tensor | None:
        if self.last is None or self.last.shape[0] != prefix[0].shape[0]:
            return None  # no frame yet, or another batch of rows
        return self.last[:, start : start + count]


class BigramDrafter:
    """Chains guesses through a table of codebook transitions, ``table[c, code of c-1] -> code of c``.

    The table [K,V] (-1: not seen) is filled from every observed frame, later frames overwriting earlier
    ones. Where it has no entry for a row, the previous frame's code of that codebook is the guess; a
    draft ends before the first codebook where some row has neither.
    """

    name = "bigram"

    def __init__(self, vocabulary: int) -> None:
        if isinstance(vocabulary, bool) or not isinstance(vocabulary, int) or vocabulary < 1:
            raise ValueError(f"BigramDrafter: vocabulary={vocabulary!r} must be a positive integer (codes per codebook)")
        self.vocabulary = vocabulary
        self.table: torch.Tensor | None = None
        self.previous = PreviousFrameDrafter()

    def reset(self) -> None:
        self.table = None
        self.previous.reset()

    def observe(self, frame: torch.Tensor) -> None:
        b, k = frame.shape
        if self.table is None or self.table.shape[0] != k or self.table.device != frame.device:
            self.table = torch.full((k, self.vocabulary), -1, dtype=torch.long, device=frame.device)
        codebooks = torch.arange(1, k, device=frame.device).expand(b, k - 1)
        self.table[codebooks, frame[:, :-1]] = frame[:, 1:]
        self.previous.observe(frame)

    def draft(self, prefix: list[torch.Tensor], start: int, count: int) -> torch.Tensor | None:
        if self.table is None:
            return None
        fallback = self.previous.draft(prefix, start, count)
        code, guesses = prefix[-1], []
        for j in range(min(count, self.table.shape[0] - start)):
            code = self.table[start + j, code]
            if fallback is not None:
                code = torch.where(code < 0, fallback[:, j], code)
            if bool((code < 0).any()):
                break
            guesses.append(code)
        return torch.stack(guesses, dim=1) if guesses else None


def make_drafter(kind: str, vocabulary: int):
    """The drafter named ``kind`` (one of :data:`DRAFTERS`) for a model of ``vocabulary`` codes per codebook."""
    if kind == "bigram":
        return BigramDrafter(vocabulary)
    if kind == "previous":
        return PreviousFrameDrafter()
    raise ValueError(f"unknown drafter {kind!r}: choose one of {', '.join(DRAFTERS)}")
