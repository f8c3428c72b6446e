"""The frame loop shared by every backend: prompt -> audio codes, one frame at a time.

It drives a :class:`csm_core.components.CsmEngines` (backbone + depth decoder) with a
:class:`~csm_core.generation.embedder.FrameEmbedder`:

1. prefill the prompt into the backbone -> hidden state and codebook-0 logits;
2. per frame: sample codebook 0, then run the depth decoder for codebooks 1..K-1 (its cache reset each
   frame), giving one frame of K codes;
3. stop when every row has produced the all-zero end-of-speech frame (not yielded), after ``max_frames``,
   or when the silence guard fires; otherwise feed the frame back into the backbone at the next position.

Frames are yielded as they are made ([B,K] int64) so that a codec can stream them. A row that has ended
while others go on yields all-zero frames (the end marker), and the loop stops as soon as every row has
ended. Requests that join and leave at frame boundaries, each with its own parameters, are the batch
session's (:mod:`csm_core.generation.batch_session`), which shares this module's frame decode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from csm_core.components import CsmEngines

from .embedder import FrameEmbedder
from .batch import PromptBatch, as_prompt_batch
from .prompt import Prompt
from .sampling import SamplingParams, sample

__all__ = ["SilenceGuard", "decode_frame", "generate_frames", "generate_codes"]


@dataclass(frozen=True)
class SilenceGuard:
    """Stop a row after ``patience`` consecutive silent frames (default 38, about 3 s at 12.5 frames/s).

    A frame is silent when its codebook-0 (semantic) code is in ``silent_codes`` or, when
    ``silent_codes`` is None, when it repeats the previous frame's codebook-0 code: a model stuck in
    silence (or in any loop of one sound) emits the same semantic code frame after frame. The frame at
    which the guard fires ends the row like the end-of-speech frame does.
    """

    patience: int = 38
    silent_codes: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"SilenceGuard.patience={self.patience!r}: must be an integer >= 1 (frames)")

    def is_silent(self, c0: torch.Tensor, previous_c0: torch.Tensor | None) -> torch.Tensor:
        """Codebook-0 codes [B] (and the previous frame's) -> bool [B]."""
        if self.silent_codes is not None:
            silent = torch.tensor(sorted(self.silent_codes), device=c0.device, dtype=c0.dtype)
            return torch.isin(c0, silent)
        if previous_c0 is None:
            return torch.zeros_like(c0, dtype=torch.bool)
        return c0 == previous_c0


def decode_frame(engines, embedder, hidden, c0_logits, params=None, generator=None, forced=None, choose=None) -> torch.Tensor:
    """One frame [B,K]: codebook 0 from the backbone's logits, codebooks 1..K-1 from the depth decoder.

    A backend's :class:`~csm_core.components.FrameEngine` runs this same function inside its fused
    unit (with its own eager ``engines``), so fused and step-by-step frames are the same codes.

    Codes are chosen by ``sample(logits, params, generator)``, or by ``choose(logits) -> codes [B]`` when
    given (the batch session draws each row with its own parameters and generator).

    ``forced`` (codes [B,K]) teacher-forces the frame: the decoder is fed ``forced``'s codes instead of
    its own choices, and what it chose at each codebook is still returned (a quality measure compares
    the two); None: each chosen code is fed back, as in generation.
    """
    if choose is None:
        def choose(logits):
            return sample(logits, params, generator)
    b, k = hidden.shape[0], embedder.num_codebooks
    code = choose(c0_logits)
    codes = [code]
    fed = code if forced is None else forced[:, 0]
    engines.decoder.reset()
    x = torch.cat((hidden.unsqueeze(1).to(embedder.dtype), embedder.embed_audio(0, fed)), dim=1)
    positions = torch.arange(2, device=hidden.device).expand(b, 2)
    for i in range(1, k):
        code = choose(engines.decoder.step(x, positions))
        codes.append(code)
        fed = code if forced is None else forced[:, i]
        x = embedder.embed_audio(i, fed)
        positions = torch.full((b, 1), i + 1, device=hidden.device, dtype=torch.long)
    return torch.stack(codes, dim=1)


def generate_frames(
    engines: CsmEngines,
    embedder: FrameEmbedder,
    prompt: PromptBatch | Prompt | tuple[torch.Tensor, torch.Tensor],
    *,
    max_frames: int,
    sampling: SamplingParams = SamplingParams(),
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    silence_guard: SilenceGuard | None = SilenceGuard(),
) -> Iterator[torch.Tensor]:
    """Yield frames [B,K] int64 continuing ``prompt``: a :class:`Prompt`, tokens/mask [T,K+1] or [B,T,K+1]
    (rows of one length), or a :class:`PromptBatch`.

    Every row must leave ``max_frames`` positions of the backbone's budget free (checked per row).

    Randomness comes from ``generator`` if given, else from a generator on the embedder's device seeded
    with ``seed`` (None: torch's global RNG). ``silence_guard=None`` disables the silence guard.
    """
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames={max_frames!r}: must be an integer >= 1")
    device = embedder.device
    batch = as_prompt_batch(prompt).to(device)
    embedder.check_tokens(batch.tokens, batch.mask)
    batch.check_budget(max_frames, engines.backbone.max_positions)
    b = len(batch)
    starts = batch.lengths.unsqueeze(1)  # [B,1]: the position of each row's first generated frame
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    fused = getattr(engines, "frame_decoder", None)  # optional (CsmEngines.frame_decoder): None on most backends
    if fused is not None and not fused.supports(sampling):
        fused = None

    engines.backbone.reset()
    hidden, c0_logits = engines.backbone.prefill(embedder.embed_frames(batch.tokens, batch.mask), batch.positions)
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    silent_run = torch.zeros(b, dtype=torch.long, device=device)
    previous_c0 = None
    for index in range(max_frames):
        if fused is not None:
            frame = fused.decode(hidden, c0_logits, sampling, generator)
        else:
            frame = decode_frame(engines, embedder, hidden, c0_logits, sampling, generator)
        frame = frame.masked_fill(ended.unsqueeze(1), 0)
        now_ended = (frame == 0).all(dim=1)
        if silence_guard is not None:
            silent = silence_guard.is_silent(frame[:, 0], previous_c0) & ~ended
            silent_run = torch.where(silent, silent_run + 1, 0)
            now_ended |= silent_run >= silence_guard.patience
            previous_c0 = frame[:, 0]
        ended |= now_ended
        if bool(ended.all()):
            return
        frame = frame.masked_fill(ended.unsqueeze(1), 0)
        yield frame
        if index + 1 < max_frames:
            hidden, c0_logits = engines.backbone.step(embedder.embed_codes(frame), starts + index)


def generate_codes(
    engines: CsmEngines,
    embedder: FrameEmbedder,
    prompt: PromptBatch | Prompt | tuple[torch.Tensor, torch.Tensor],
    **kwargs,
) -> torch.Tensor:
    """All frames of :func:`generate_frames` (same arguments) as codes [B,K,F] (F may be 0).

    F is the longest row's frame count; rows that ended earlier are zero-filled after their end.
    """
    batch = as_prompt_batch(prompt)
    frames = list(generate_frames(engines, embedder, batch, **kwargs))
    if not frames:
        b = len(batch)
        return torch.zeros(b, embedder.num_codebooks, 0, dtype=torch.long, device=embedder.device)
    return torch.stack(frames, dim=2)
