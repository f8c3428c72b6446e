"""The prompt batch the frame loop takes: ``B`` rows of tokens/mask with per-row positions and lengths.

:func:`as_prompt_batch` turns any prompt form into a :class:`PromptBatch`: a :class:`~csm_core.generation.prompt.Prompt`
or tokens/mask [T,K+1] is one row, tokens/mask [B,T,K+1] are B rows of one length T (positions ``0..T-1``).
:func:`~csm_core.generation.frames.generate_frames` runs such rows in lock step;
:class:`~csm_core.generation.batch_session.BatchSession` takes one row per request (requests of different
lengths, parameters and seeds batch there, each in a KV-cache row of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt import Prompt, check_budget

__all__ = ["PromptBatch", "as_prompt_batch"]


@dataclass(frozen=True)
class PromptBatch:
    """Prompts of B rows: ``tokens`` [B,T,K+1] int64, ``mask`` [B,T,K+1] bool, ``positions`` [B,T] int64,
    ``lengths`` [B] int64 (each row's prompt length = the position of its first generated frame)."""

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
