"""Continuous batching: requests join and leave a running batch at frame boundaries.

A :class:`BatchSession` holds up to ``rows`` requests, each in a *slot* (a row of the engines' KV caches)
for its lifetime:

- :meth:`BatchSession.add` prefills a prompt into a free slot (the other rows are not touched); the
  request joins the batch at the next :meth:`BatchSession.step`;
- :meth:`BatchSession.step` makes one frame for every active slot -> ``{slot: frame [K] or None}``;
  None means the row has ended (end-of-speech frame, silence guard, or its ``max_frames`` were made:
  reported at the step after its last frame) and its slot is free again;
- :meth:`BatchSession.remove` drops a request (cancelled, failed) at once; the others go on.

Each row keeps its own positions (prompt ``0..t-1``, frame ``j`` at ``t+j``), sampling parameters,
random generator (seeded with its own seed) and end-of-speech state, and draws its random numbers in
the order :func:`~csm_core.generation.frames.generate_frames` draws them for that request alone (one
row, codebook 0 then 1..K-1, frame after frame). So a row's codes are those of the request alone, under
greedy decoding and under seeded sampling, whichever rows share the batch and whenever it joined (up to
floating-point summation order in batched kernels, which does not move an argmax in the tests).

The backbone steps the contiguous range of slots from the lowest to the highest live one (new requests
take the lowest free slot, so the range stays tight); free slots inside it get a dummy input at position
0, which a later prefill overwrites. The static KV cache is written by position and read under a causal
mask, so a slot's stale entries beyond its current position are never seen: resetting a row is free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_core.errors import CsmError

from .batch import as_prompt_batch
from .embedder import FrameEmbedder
from .frames import SilenceGuard, decode_frame
from .prompt import Prompt, check_budget
from .row_engines import row_engines
from .sampling import SamplingParams, choose_with_noise, draw_noise, limit_logits, sample

__all__ = ["BatchSession", "SessionFull"]


class SessionFull(CsmError):
    """Every slot of the session is taken."""


@dataclass
class _Row:
    start: int  # the position of the row's first generated frame (its prompt length)
    max_frames: int
    sampling: SamplingParams
    generator: torch.Generator | None
    hidden: torch.Tensor  # [1,D]: the backbone's output for the next frame
    c0_logits: torch.Tensor  # [1,V]
    frames: int = 0
    silent_run: int = 0
    previous_c0: torch.Tensor | None = None

    @property
    def exhausted(self) -> bool:
        return self.frames >= self.max_frames


def _sample_rows(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """Codes [n] from logits [n,V], each row's code the one :func:`sample` gives that row alone.

    Rows that share their sampling parameters are chosen in one call: each row draws its own noise
    [1,V] from its own generator (what ``sample`` draws for it alone), and the filters work row by row.
    """
    codes = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    groups: dict[SamplingParams, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.sampling, []).append(i)
    for params, members in groups.items():
        index = torch.tensor(members, device=logits.device)
        group = logits if len(members) == len(rows) else logits.index_select(0, index)
        if params.greedy:
            codes[index] = sample(group, params)
            continue
        group = limit_logits(group, params)
        noise = torch.cat([draw_noise((1, group.shape[-1]), logits.device, rows[i].generator) for i in members])
        codes[index] = choose_with_noise(group, params, noise)
    return codes


class BatchSession:
    """Up to ``rows`` requests generating together, each in a slot of its own (see the module docstring).

    ``engines``: :class:`~csm_core.components.CsmEngines`; they are sized for ``rows`` rows with
    :func:`~csm_core.generation.row_engines.row_engines` (which raises
    :class:`~csm_core.generation.row_engines.BatchingUnsupported` for more than one row on engines that
    serve one request at a time). ``silence_guard`` applies to every row (None: off).
    """

    def __init__(self, engines, embedder: FrameEmbedder, rows: int = 1,
                 silence_guard: SilenceGuard | None = SilenceGuard()) -> None:
        self.engines = row_engines(engines, rows)
        self.embedder = embedder
        self.rows = rows
        self.silence_guard = silence_guard
        self._slots: dict[int, _Row] = {}

    # -- bookkeeping --------------------------------------------------------------------------------
    @property
    def active(self) -> list[int]:
        """The taken slots, ascending."""
        return sorted(self._slots)

    @property
    def free(self) -> int:
        return self.rows - len(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def frames_made(self, slot: int) -> int:
        return self._slots[slot].frames

    # -- joining and leaving ------------------------------------------------------------------------
    def add(self, prompt: Prompt | tuple[torch.Tensor, torch.Tensor], *, max_frames: int,
            sampling: SamplingParams = SamplingParams(), seed: int | None = 0,
            generator: torch.Generator | None = None) -> int:
        """Prefill ``prompt`` (a :class:`Prompt` or tokens/mask [T,K+1]) into the lowest free slot; return it.

        Randomness as in :func:`~csm_core.generation.frames.generate_frames`: ``generator`` if given,
        else a generator on the embedder's device seeded with ``seed`` (None: torch's global RNG).
        Raises :class:`SessionFull` when no slot is free, ValueError for a prompt that does not fit.
        """
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames={max_frames!r}: must be an integer >= 1")
        free = [slot for slot in range(self.rows) if slot not in self._slots]
        if not free:
            raise SessionFull(f"all {self.rows} slots of the batch session are taken")
        batch = as_prompt_batch(prompt)
        if len(batch) != 1:
            raise ValueError(f"BatchSession.add takes one prompt [T,K+1], got {len(batch)} rows")
        device = self.embedder.device
        batch = batch.to(device)
        self.embedder.check_tokens(batch.tokens, batch.mask)
        length = int(batch.lengths[0])
        check_budget(length, max_frames, self.engines.backbone.max_positions)
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        slot = free[0]
        hidden, c0_logits = self.engines.prefill_row(
            slot, self.embedder.embed_frames(batch.tokens, batch.mask), batch.positions)
        self._slots[slot] = _Row(length, max_frames, sampling, generator, hidden, c0_logits)
        return slot

    def remove(self, slot: int) -> None:
        """Drop the request in ``slot`` (cancelled, failed); unknown or already ended slots are ignored."""
        if self._slots.pop(slot, None) is not None:
            self.engines.reset_row(slot)

    # -- one frame ----------------------------------------------------------------------------------
    def step(self) -> dict[int, torch.Tensor | None]:
        """One frame for every active slot: ``{slot: codes [K] int64}``, or None for a slot that ended
        (now free). Returns ``{}`` when no slot is active."""
        out: dict[int, torch.Tensor | None] = {}
        for slot in [s for s, row in self._slots.items() if row.exhausted]:
            self.remove(slot)
            out[slot] = None
        slots = self.active
        if not slots:
            return out
        rows = [self._slots[s] for s in slots]
        hidden = torch.cat([row.hidden for row in rows])
        c0_logits = torch.cat([row.c0_logits for row in rows])
        frames = decode_frame(self.engines, self.embedder, hidden, c0_logits,
                              choose=lambda logits: _sample_rows(logits, rows))
        going = []
        for i, (slot, row) in enumerate(zip(slots, rows)):
            frame = frames[i]
            if self._ends(row, frame):
                self.remove(slot)
                out[slot] = None
                continue
            row.frames += 1
            out[slot] = frame
            if not row.exhausted:
                going.append((slot, row, frame))
        if going:
            self._advance(going)
        return out

    def _ends(self, row: _Row, frame: torch.Tensor) -> bool:
        ended = bool((frame == 0).all())
        guard = self.silence_guard
        if guard is not None:
            c0 = frame[:1]
            silent = bool(guard.is_silent(c0, row.previous_c0)[0])
            row.silent_run = row.silent_run + 1 if silent else 0
            ended |= row.silent_run >= guard.patience
            row.previous_c0 = c0
        return ended

    def _advance(self, going: list[tuple[int, _Row, torch.Tensor]]) -> None:
        """Feed each going row's frame back into the backbone at its next position (one batched step)."""
        first, last = going[0][0], going[-1][0]
        n = last - first + 1
        embeds = self.embedder.embed_codes(torch.stack([frame for _, _, frame in going]))  # [m,1,D]
        if n == len(going):
            batch_embeds = embeds
            positions = torch.tensor([[row.start + row.frames - 1] for _, row, _ in going],
                                     dtype=torch.long, device=embeds.device)
        else:  # free (or finished) slots inside the range: a dummy input at position 0
            batch_embeds = embeds.new_zeros(n, *embeds.shape[1:])
            positions = torch.zeros(n, 1, dtype=torch.long, device=embeds.device)
            for j, (slot, row, _) in enumerate(going):
                batch_embeds[slot - first] = embeds[j]
                positions[slot - first, 0] = row.start + row.frames - 1
        hidden, c0_logits = self.engines.step_rows(first, batch_embeds, positions)
        for slot, row, _ in going:
            row.hidden = hidden[slot - first : slot - first + 1]
            row.c0_logits = c0_logits[slot - first : slot - first + 1]
