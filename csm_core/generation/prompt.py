"""Assembling the backbone prompt from conversation context, as Sesame's ``generator.py`` does.

A prompt is a sequence of frames (see :mod:`csm_core.generation.embedder`): for each context segment,
its text frames ``[speaker]text`` (one text token per frame, BOS/EOS as the tokenizer adds them) and then
its audio frames followed by one all-zero end-of-audio frame; then the text frames of the utterance to
speak. Generation continues right after it, one position per new frame, within the backbone's position
budget (2048 for CSM-1B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["TextTokenizer", "Segment", "Prompt", "segment_frames", "text_frames", "build_prompt", "check_budget"]


class TextTokenizer(Protocol):
    """Text -> token ids. Whether BOS/EOS are added is the tokenizer object's setting (Sesame's Llama 3
    tokenizer adds both around every segment's text)."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Segment:
    """One turn of the conversation: ``speaker`` id, its ``text`` and, for context, its ``audio_codes`` [K,F]."""

    speaker: int
    text: str
    audio_codes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.speaker, bool) or not isinstance(self.speaker, int) or self.speaker < 0:
            raise ValueError(f"Segment.speaker={self.speaker!r}: must be an integer >= 0")
        codes = self.audio_codes
        if codes is not None and (not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.is_floating_point()):
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"Segment.audio_codes: must be an integer tensor [K,F], got {shape}")


@dataclass(frozen=True)
class Prompt:
    """``tokens`` [T,K+1] int64 and ``mask`` [T,K+1] bool; ``context_used`` context segments kept (the newest)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    context_used: int = 0

    def __len__(self) -> int:
        return self.tokens.shape[0]


def text_frames(
    speaker: int, text: str, tokenizer: TextTokenizer, num_codebooks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[speaker]text`` -> (tokens [T,K+1], mask [T,K+1]) with the text in the last column."""
    ids = torch.tensor(tokenizer.encode(f"[{speaker}]{text}"), dtype=torch.long)
    tokens = torch.zeros(len(ids), num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros(len(ids), num_codebooks + 1, dtype=torch.bool)
    tokens[:, -1], mask[:, -1] = ids, True
    return tokens, mask


def audio_frames(codes: torch.Tensor, num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio codes [K,F] -> (tokens [F+1,K+1], mask [F+1,K+1]): the frames, then an all-zero end frame."""
    if codes.shape[0] != num_codebooks:
        raise ValueError(f"Segment.audio_codes has {codes.shape[0]} codebooks, the model has {num_codebooks}")
    tokens = torch.zeros(codes.shape[1] + 1, num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:-1, :-1], mask[:, :-1] = codes.t().to(device="cpu", dtype=torch.long), True
    return tokens, mask


def segment_frames(segment: Segment, tokenizer: TextTokenizer, num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A context segment -> its text frames, then (if it has audio) its audio frames and end frame."""
    tokens, mask = text_frames(segment.speaker, segment.text, tokenizer, num_codebooks)
    if segment.audio_codes is not None:
        audio_tokens, audio_mask = audio_frames(segment.audio_codes, num_codebooks)
        tokens, mask = torch.cat((tokens, audio_tokens)), torch.cat((mask, audio_mask))
    return tokens, mask


def check_budget(prompt_len: int, max_frames: int, max_positions: int) -> None:
    """Raise ValueError unless a prompt of ``prompt_len`` frames leaves ``max_frames`` positions free."""
    if prompt_len + max_frames > max_positions:
        raise ValueError(
            f"prompt of {prompt_len} positions + max_frames={max_frames} exceeds the {max_positions}-position "
            f"budget (room for {max(max_positions - prompt_len, 0)} new frames): shorten the context or the "
            "text, lower max_frames, or let the oldest context be trimmed (trim_context=True)"
        )


def build_prompt(
    context: Sequence[Segment],
    speaker: int,
    text: str,
    tokenizer: TextTokenizer,
    *,
    num_codebooks: int,
    max_frames: int,
    max_positions: int = 2048,
    trim_context: bool = False,
) -> Prompt:
    """The prompt for speaking ``text`` as ``speaker`` after ``context`` (oldest first).

    It must leave ``max_frames`` of ``max_positions`` free. If it does not: with ``trim_context`` the
    oldest context segments are dropped until it fits; otherwise, or when even the text alone does not fit,
    ValueError.
    """
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames={max_frames!r}: must be an integer >= 1")
    Segment(speaker, text)  # validates the speaker id
    current = text_frames(speaker, text, tokenizer, num_codebooks)
    parts = [segment_frames(s, tokenizer, num_codebooks) for s in context]
    lengths = [t.shape[0] for t, _ in parts]
    first = 0
    if trim_context:
        while first < len(parts) and sum(lengths[first:]) + len(current[0]) + max_frames > max_positions:
            first += 1
    check_budget(sum(lengths[first:]) + len(current[0]), max_frames, max_positions)
    kept = parts[first:] + [current]
    return Prompt(
        tokens=torch.cat([t for t, _ in kept]),
        mask=torch.cat([m for _, m in kept]),
        context_used=len(parts) - first,
    )
