"""Statistics of Mimi codes of the user's audio: cheap summaries a classifier can use.

Input: ``codes`` [K, F] integers, K codebooks (32 for CSM's Mimi) by F frames at 12.5 frames/s, as
the tokenizer produced them (this module never encodes audio). Codebook 0 is semantic (it tracks
phonetic content), codebooks 1..K-1 are acoustic (residual vector quantisation of timbre, level and
detail).

Per codebook ``k`` over the F frames:

- ``entropy_bits``: Shannon entropy of the histogram of its codes (bits). At most
  ``log2(min(F, codebook_size))``, so it grows with length; ``normalized_entropy`` divides by that
  bound and lies in [0, 1] (0 for F = 1).
- ``change_rate``: fraction of adjacent frame pairs whose code differs, in [0, 1] (``None`` for
  F = 1). A held sound (silence, a sustained vowel) repeats semantic codes; fast speech changes them
  every frame.
- ``distinct_ratio``: distinct codes / F, in (0, 1].

Reported for the semantic codebook on its own and as means over the acoustic codebooks. All of it
is a handful of ``np.unique`` calls on at most a few thousand integers (microseconds), so it is
always computed on every frame, also when prosody is amortized. The statistics are reported as
features; the rule-based classifier does not use them (no validated rule maps them to emotion),
a learned classifier may.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIMI_CODEBOOK_SIZE = 2048
"""Codes per Mimi codebook; valid codes are 0..2047."""
MIMI_FRAME_RATE = 12.5
"""Mimi frames per second."""


@dataclass(frozen=True)
class CodebookStats:
    """Statistics of one codebook's codes over the frames (see the module docstring)."""

    entropy_bits: float
    normalized_entropy: float
    change_rate: float | None
    distinct_ratio: float


@dataclass(frozen=True)
class TokenStatistics:
    """Statistics of ``codes`` [K, F]: codebook 0 (semantic) and means over 1..K-1 (acoustic)."""

    num_codebooks: int
    num_frames: int
    duration_s: float
    """``num_frames / 12.5``."""
    semantic: CodebookStats
    acoustic_mean: CodebookStats | None
    """Means over codebooks 1..K-1; ``None`` when K = 1."""
    semantic_changes_per_s: float | None
    """Code changes of codebook 0 per second (``change_rate * 12.5``): a tempo proxy."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def validate_codes(codes: Any, codebook_size: int = MIMI_CODEBOOK_SIZE) -> np.ndarray:
    """Check ``codes``: integer array [K, F] with K >= 1, F >= 1, values in [0, codebook_size)."""
    c = np.asarray(codes)
    if c.ndim != 2:
        hint = "; drop the batch axis (codes[0]) first" if c.ndim == 3 and c.shape[0] == 1 else ""
        raise ValueError(f"codes must have shape [K, F] (codebooks x frames), got {list(c.shape)}{hint}")
    if not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {c.dtype}")
    if c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"codes must have at least one codebook and one frame, got shape {list(c.shape)}")
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(
            f"codes must lie in [0, {codebook_size}) (codebook_size), got values in [{lo}, {hi}]; "
            f"pass Mimi codes, not CSM tokens with special ids"
        )
    return c


def codebook_stats(row: np.ndarray, codebook_size: int = MIMI_CODEBOOK_SIZE) -> CodebookStats:
    """Statistics of one codebook's codes ``row`` [F]."""
    f = row.size
    _, counts = np.unique(row, return_counts=True)
    p = counts / f
    entropy = float(-(p * np.log2(p)).sum())
    bound = np.log2(min(f, codebook_size))
    return CodebookStats(
        entropy_bits=entropy,
        normalized_entropy=float(entropy / bound) if bound > 0 else 0.0,
        change_rate=float(np.mean(row[1:] != row[:-1])) if f > 1 else None,
        distinct_ratio=float(counts.size / f),
    )


def _mean(stats: list[CodebookStats]) -> CodebookStats:
    changes = [s.change_rate for s in stats if s.change_rate is not None]
    return CodebookStats(
        entropy_bits=float(np.mean([s.entropy_bits for s in stats])),
        normalized_entropy=float(np.mean([s.normalized_entropy for s in stats])),
        change_rate=float(np.mean(changes)) if changes else None,
        distinct_ratio=float(np.mean([s.distinct_ratio for s in stats])),
    )


def token_statistics(codes: Any, codebook_size: int = MIMI_CODEBOOK_SIZE) -> TokenStatistics:
    """Statistics of Mimi ``codes`` [K, F] (integers in [0, codebook_size))."""
    c = validate_codes(codes, codebook_size)
    per_book = [codebook_stats(row, codebook_size) for row in c]
    semantic = per_book[0]
    return TokenStatistics(
        num_codebooks=int(c.shape[0]),
        num_frames=int(c.shape[1]),
        duration_s=float(c.shape[1] / MIMI_FRAME_RATE),
        semantic=semantic,
        acoustic_mean=_mean(per_book[1:]) if len(per_book) > 1 else None,
        semantic_changes_per_s=(
            float(semantic.change_rate * MIMI_FRAME_RATE) if semantic.change_rate is not None else None
        ),
    )
