"""Assembling the backbone prompt from conversation context, as Sesame's ``generator.py`` does.

A prompt is a sequence of frames (see :mod:`csm_core.generation.embedder`): for each context segment,
its text frames ``[speaker]text`` (one text token per frame, BOS/EOS as the tokenizer adds them) and then
its audio frames followed by one all-zero end-of-audio frame; then the text frames of the utterance to
speak. Generation continues right after it, one position per new frame, within the backbone's position
budget (2048 for CSM-1B).

The prompt holds the context it is given: which context fits the budget is chosen before, by the one
context policy (:mod:`csm_core.context_policy`, which the pipeline applies to every utterance). A
prompt that does not leave room for the frames to generate is an error here, never trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from csm_core.stages import Segment

__all__ = ["TextTokenizer", "Segment", "Prompt", "segment_frames", "text_frames", "build_prompt", "check_budget"]


class TextTokenizer(Protocol):
    """Text -> token ids. Whether BOS/EOS are added is the tokenizer object's setting (Sesame's Llama 3
    tokenizer adds both around every segment's text)."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Prompt:
    """``tokens`` [T,K+1] int64 and ``mask`` [T,K+1] bool."""

    tokens: torch.Tensor
    mask: torch.Tensor

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


def audio_frames(codes, num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio codes [K,F] (array or tensor) -> (tokens [F+1,K+1], mask [F+1,K+1]): the frames, then an
    all-zero end frame."""
    codes = torch.as_tensor(codes)
    if codes.shape[0] != num_codebooks:
        raise ValueError(f"Segment.codes has {codes.shape[0]} codebooks, the model has {num_codebooks}")
    tokens = torch.zeros(codes.shape[1] + 1, num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:-1, :-1], mask[:, :-1] = codes.t().to(device="cpu", dtype=torch.long), True
    return tokens, mask


def segment_frames(segment: Segment, tokenizer: TextTokenizer, num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A context segment -> its text frames, then (if it has audio) its audio frames and end frame."""
    tokens, mask = text_frames(segment.speaker, segment.text, tokenizer, num_codebooks)
    if segment.codes is not None:
        audio_tokens, audio_mask = audio_frames(segment.codes, num_codebooks)
        tokens, mask = torch.cat((tokens, audio_tokens)), torch.cat((mask, audio_mask))
    return tokens, mask


def check_budget(prompt_len: int, max_frames: int, max_positions: int) -> None:
    """Raise ValueError unless a prompt of ``prompt_len`` frames leaves ``max_frames`` positions free."""
    if prompt_len + max_frames > max_positions:
        raise ValueError(
            f"prompt of {prompt_len} positions + max_frames={max_frames} exceeds the {max_positions}-position "
            f"budget (room for {max(max_positions - prompt_len, 0)} new frames): shorten the context or the "
            "text, or lower max_frames (the pipeline's context policy trims the oldest context to fit unless "
            "generation.trim_context = false)"
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
) -> Prompt:
    """The prompt for speaking ``text`` as ``speaker`` after ``context`` (oldest first, all of it).

    It must leave ``max_frames`` of ``max_positions`` free, else ValueError (choose the context with
    :func:`csm_core.context_policy.context_for_turn` first).
    """
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames={max_frames!r}: must be an integer >= 1")
    Segment(speaker, text)  # validates the speaker id
    parts = [segment_frames(s, tokenizer, num_codebooks) for s in context]
    parts.append(text_frames(speaker, text, tokenizer, num_codebooks))
    check_budget(sum(t.shape[0] for t, _ in parts), max_frames, max_positions)
    return Prompt(tokens=torch.cat([t for t, _ in parts]), mask=torch.cat([m for _, m in parts]))
