"""Real CSM engines whose logits are pushed towards one code from a chosen frame on, so a test can make a
row end (code 0 in every codebook is the end-of-speech frame) or fall silent where it wants, while the
model itself still runs: what is tested is the generation loop's reaction.

:class:`Forcing` drives both loops: the lock-step frame loop (``backbone.prefill``/``step``, every row at
one frame) and a :class:`~csm_core.generation.batch_session.BatchSession` (the per-row calls of
:class:`~csm_core.components.RowEngines`, offered when the wrapped engines have them: each cache row
counts its own frames from its own prefill).
"""

from __future__ import annotations

import torch

from csm_core.generation.row_engines import has_row_methods


class Forcing:
    """Real engines whose logits are pushed to ``code`` for row r from frame ``start[r]`` on.

    ``all_codebooks``: every codebook (so ``code=0`` makes the end-of-speech frame), else codebook 0 only.
    In a batch session, row r is cache row (slot) r.
    """

    def __init__(self, engines, start: list[int | None], code: int, all_codebooks: bool = True) -> None:
        self.inner, self.start, self.code, self.all = engines, start, code, all_codebooks
        self.frame = -1  # lock-step: the frame every row is at
        self.row_frames: dict[int, int] | None = None  # per-row (a session): live cache row -> its frame
        self.backbone, self.decoder = _Backbone(self), _Decoder(self)

    def push(self, logits: torch.Tensor, rows=None) -> torch.Tensor:
        """``logits`` [n,V]: lock-step rows 0..n-1 (``rows`` None) or cache rows ``rows`` (per-row)."""
        logits = logits.clone()
        if rows is None:
            frames = [self.frame] * logits.shape[0]
            rows = range(logits.shape[0])
        else:
            frames = [self.row_frames.get(row) for row in rows]
        for i, (row, frame) in enumerate(zip(rows, frames)):
            start = self.start[row] if row < len(self.start) else None
            if start is not None and frame is not None and frame >= start:
                logits[i, self.code] += 1e4
        return logits

    # -- per-row calls (RowEngines), for a BatchSession ------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def for_batch(self, rows: int):
        """Itself for the rows the wrapped engines hold (a wrapper does not survive re-allocation)."""
        return self if has_row_methods(self.inner) and rows <= self.inner.batch_size else None

    def prefill_row(self, row: int, embeds, positions):
        self.row_frames = {} if self.row_frames is None else self.row_frames
        self.row_frames[row] = 0
        hidden, logits = self.inner.prefill_row(row, embeds, positions)
        return hidden, self.push(logits, [row])

    def reset_row(self, row: int) -> None:
        if self.row_frames is not None:
            self.row_frames.pop(row, None)
        self.inner.reset_row(row)

    def step_rows(self, first: int, embeds, positions):
        rows = list(range(first, first + embeds.shape[0]))
        for row in rows:
            if row in self.row_frames:
                self.row_frames[row] += 1
        hidden, logits = self.inner.step_rows(first, embeds, positions)
        return hidden, self.push(logits, rows)


class _Backbone:
    def __init__(self, forcing: Forcing) -> None:
        self.f, self.max_positions = forcing, forcing.inner.backbone.max_positions

    def reset(self):
        self.f.inner.backbone.reset()

    def prefill(self, embeds, positions):
        self.f.frame, self.f.row_frames = 0, None
        hidden, logits = self.f.inner.backbone.prefill(embeds, positions)
        return hidden, self.f.push(logits)

    def step(self, embed, position):
        self.f.frame += 1
        hidden, logits = self.f.inner.backbone.step(embed, position)
        return hidden, self.f.push(logits)


class _Decoder:
    def __init__(self, forcing: Forcing) -> None:
        self.f = forcing

    def reset(self):
        self.f.inner.decoder.reset()

    def step(self, x, positions):
        logits = self.f.inner.decoder.step(x, positions)
        if not self.f.all:
            return logits
        # a session decodes its live rows, ascending (BatchSession.active); the lock-step loop rows 0..n-1
        rows = None if self.f.row_frames is None else sorted(self.f.row_frames)
        return self.f.push(logits, rows)
