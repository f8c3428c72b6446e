"""Several prompts of different lengths in one batch: left padding with per-row positions.

The backbone's static KV cache is written *by position*, and its causal mask and RoPE angles are
looked up per position, so rows of one batch need not share positions. A batch of prompts of lengths
``t_i`` is laid out in ``T = max t_i`` sequence slots, each row **left**-padded:

    row i:  [pad ... pad | prompt_i]          sequence slots 0 .. T-1
    pos  :  [t_i .. T-1  | 0 .. t_i-1]        positions given to the backbone

- the real tokens keep positions ``0..t_i-1``, exactly as when the row runs alone, and never attend to
  the pad slots (their positions ``t_i..T-1`` are larger: the causal mask hides them);
- the last sequence slot of every row is its last real token, so ``prefill``'s returned hidden state
  (that of the last slot) is the row's own;
- generated frame ``j`` of row ``i`` goes to position ``t_i + j``, overwriting the pad slot written
  there before any query at a position ``>= t_i + j`` can read it.

So each row computes what it would compute alone (up to floating-point summation order in batched
kernels). Pad slots are all-zero frames with an all-False mask (their embedding is zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .prompt import Prompt, check_budget

__all__ = ["PromptBatch", "stack_prompts", "as_prompt_batch", "live_rows"]


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts: ``tokens`` [B,T,K+1] int64, ``mask`` [B,T,K+1] bool, ``positions`` [B,T] int64,
    ``lengths`` [B] int64 (each row's real prompt length = the position of its first generated frame)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        b, t = self.tokens.shape[:2] if self.tokens.ndim == 3 else (None, None)
        if self.tokens.ndim != 3 or self.mask.shape != self.tokens.shape:
            raise ValueError(
                f"PromptBatch: tokens {tuple(self.tokens.shape)} and mask {tuple(self.mask.shape)} must both "
                "be [B,T,K+1]"
            )
        if self.positions.shape != (b, t) or self.lengths.shape != (b,):
            raise ValueError(
                f"PromptBatch: positions {tuple(self.positions.shape)} must be [B,T]=[{b},{t}] and lengths "
                f"{tuple(self.lengths.shape)} must be [B]=[{b}]"
            )
        if t == 0 or bool((self.lengths < 1).any()) or bool((self.lengths > t).any()):
            raise ValueError(
                f"PromptBatch: every row needs 1..T={t} prompt frames (at least the text to speak), "
                f"got lengths {self.lengths.tolist()}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            self.tokens.to(device=device, dtype=torch.long), self.mask.to(device=device, dtype=torch.bool),
            self.positions.to(device=device, dtype=torch.long), self.lengths.to(device=device, dtype=torch.long),
        )

    def check_budget(self, max_frames: int, max_positions: int) -> None:
        """Raise ValueError (naming the row when B > 1) unless every row leaves ``max_frames`` positions free."""
        for row, length in enumerate(self.lengths.tolist()):
            try:
                check_budget(length, max_frames, max_positions)
            except ValueError as exc:
                raise ValueError(f"row {row} of the batch: {exc}" if len(self) > 1 else str(exc)) from None


def _frames(prompt: Prompt | tuple[torch.Tensor, torch.Tensor], row: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, mask = (prompt.tokens, prompt.mask) if isinstance(prompt, Prompt) else prompt
    if tokens.ndim != 2 or tokens.shape != mask.shape or tokens.shape[0] == 0:
        raise ValueError(
            f"stack_prompts: prompt {row} has tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)}; each "
            "prompt must be non-empty [T,K+1] tokens with a mask of the same shape"
        )
    return tokens, mask


def stack_prompts(prompts: Sequence[Prompt | tuple[torch.Tensor, torch.Tensor]]) -> PromptBatch:
    """Prompts (each tokens/mask [t_i,K+1]) -> one left-padded :class:`PromptBatch` of B = len(prompts) rows."""
    if len(prompts) == 0:
        raise ValueError("stack_prompts: no prompts given; pass at least one")
    frames = [_frames(p, row) for row, p in enumerate(prompts)]
    widths = {tokens.shape[1] for tokens, _ in frames}
    if len(widths) > 1:
        raise ValueError(f"stack_prompts: prompts have different frame widths {sorted(widths)} (K+1 must match)")
    lengths = [tokens.shape[0] for tokens, _ in frames]
    b, t, width = len(frames), max(lengths), widths.pop()
    tokens = torch.zeros(b, t, width, dtype=torch.long)
    mask = torch.zeros(b, t, width, dtype=torch.bool)
    positions = torch.empty(b, t, dtype=torch.long)
    for row, ((row_tokens, row_mask), n) in enumerate(zip(frames, lengths)):
        tokens[row, t - n :] = row_tokens.to(device="cpu", dtype=torch.long)
        mask[row, t - n :] = row_mask.to(device="cpu", dtype=torch.bool)
        positions[row, : t - n] = torch.arange(n, t)  # pad slots: after the real positions, overwritten later
        positions[row, t - n :] = torch.arange(n)
    return PromptBatch(tokens, mask, positions, torch.tensor(lengths, dtype=torch.long))


def as_prompt_batch(prompt: PromptBatch | Prompt | tuple[torch.Tensor, torch.Tensor]) -> PromptBatch:
    """Any prompt form the frame loop takes -> a :class:`PromptBatch` (on the CPU unless already batched).

    A :class:`Prompt` or tokens/mask [T,K+1] is one row; tokens/mask [B,T,K+1] are B rows of length T
    (no padding, positions ``0..T-1``).
    """
    if isinstance(prompt, PromptBatch):
        return prompt
    tokens, mask = (prompt.tokens, prompt.mask) if isinstance(prompt, Prompt) else prompt
    if tokens.ndim == 2 and tokens.shape == mask.shape:
        tokens, mask = tokens.unsqueeze(0), mask.unsqueeze(0)
    if tokens.ndim != 3 or tokens.shape != mask.shape:
        raise ValueError(
            f"prompt tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must both be [T,K+1] or [B,T,K+1]"
        )
    b, t = tokens.shape[:2]
    if t == 0:
        raise ValueError("prompt is empty: it needs at least the text to speak")
    positions = torch.arange(t, device=tokens.device).expand(b, t)
    return PromptBatch(tokens, mask, positions, torch.full((b,), t, dtype=torch.long, device=tokens.device))


def live_rows(frame: torch.Tensor) -> torch.Tensor:
    """Frame [B,K] from :func:`~csm_core.generation.frames.generate_frames` -> bool [B]: rows still speaking.

    A row that has ended yields the all-zero end marker; a live row never does (an all-zero frame is
    what ends a row), so this tells them apart exactly.
    """
    return frame.ne(0).any(dim=1)
