"""Real CSM engines whose logits are pushed towards one code from a chosen frame on, so a test can make a
row end (code 0 in every codebook is the end-of-speech frame) or fall silent where it wants, while the
model itself still runs: what is tested is the generation loop's reaction."""

from __future__ import annotations

import torch


class Forcing:
    """Real engines whose logits are pushed to ``code`` for row r from frame ``start[r]`` on.

    ``all_codebooks``: every codebook (so ``code=0`` makes the end-of-speech frame), else codebook 0 only.
    """

    def __init__(self, engines, start: list[int | None], code: int, all_codebooks: bool = True) -> None:
        self.inner, self.start, self.code, self.all = engines, start, code, all_codebooks
        self.frame = -1
        self.backbone, self.decoder = _Backbone(self), _Decoder(self)

    def push(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        for row, start in enumerate(self.start[: logits.shape[0]]):
            if start is not None and self.frame >= start:
                logits[row, self.code] += 1e4
        return logits


class _Backbone:
    def __init__(self, forcing: Forcing) -> None:
        self.f, self.max_positions = forcing, forcing.inner.backbone.max_positions

    def reset(self):
        self.f.inner.backbone.reset()

    def prefill(self, embeds, positions):
        self.f.frame = 0
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
        return self.f.push(logits) if self.f.all else logits
