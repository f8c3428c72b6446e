"""The order training samples are drawn in: reproducible, resumable, the same on every process.

The stream is endless: epoch ``e`` is a permutation of the samples drawn from ``seed`` and ``e``, and
the state is just how many draws were taken (``position``). A resumed run restores ``position`` and
draws exactly what the interrupted run would have drawn next. Every draw has a global number, which
also seeds that draw's choice of depth-decoder frames, so the choice does not depend on how a step is
split over processes or micro-batches.
"""

from __future__ import annotations

import torch

__all__ = ["SampleOrder", "draw_generator"]


class SampleOrder:
    """Draws from ``count`` samples: :meth:`take` returns ``(draw number, sample index)`` pairs."""

    def __init__(self, count: int, seed: int, position: int = 0) -> None:
        if count < 1:
            raise ValueError("SampleOrder: no samples to draw from")
        self.count, self.seed, self.position = count, seed, position
        self._epoch, self._permutation = -1, None

    def _sample_at(self, draw: int) -> int:
        epoch, offset = divmod(draw, self.count)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.count, generator=gen).tolist()
        return self._permutation[offset]

    def take(self, n: int) -> list[tuple[int, int]]:
        """The next ``n`` draws; advances :attr:`position`."""
        draws = [(d, self._sample_at(d)) for d in range(self.position, self.position + n)]
        self.position += n
        return draws


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The generator that picks draw number ``draw``'s depth-decoder frames."""
    return torch.Generator().manual_seed((seed + 1) * 2_654_435_761 + draw)
