"""The context policy: which context segments CSM conditions on, within a position budget.

Every context segment costs positions of the backbone's window: its text tokens (``[speaker]text`` with
BOS/EOS), then, when it has audio, its F frames plus one end-of-audio frame. The prompt also holds the
text of the utterance to speak, and generation needs ``max_frames`` positions after it.

The policy (:func:`choose_context`), in priority order:

1. the **current turn** (the user's segment) is always kept; if it alone does not fit the budget, that
   is an error (:class:`ContextBudgetError`), never a silent drop;
2. the **voice profile** is pinned next (dropped, with an event, only if it does not fit beside the
   current turn);
3. then the **most recent turns, newest first**, with their audio while it fits;
4. with ``keep_text_of_dropped``, older turns whose audio does not fit are kept as **text only** (a few
   positions each), newest first, while that fits; once a turn is shortened no older turn keeps its
   audio, and once a turn is dropped every older one is dropped too (the kept context is a contiguous,
   most-recent run of the conversation).

The chosen segments come back in conversation order (profile first, current turn last) with a record
of what was dropped or shortened, reported as events. The budget is the model's position budget minus
``max_frames``, or the smaller ``context.budget_positions`` when that is set (cheaper prefill, less
context); ``context.keep_text_of_dropped`` switches rule 4 on (:class:`csm_core.config.ContextSettings`).
This is the one place where context is trimmed: the prompt builder (:mod:`csm_core.generation.prompt`)
takes the context it is given, and a prompt that does not fit is an error there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

from csm_core.errors import CsmError
from csm_core.stages import Segment, position_window

if TYPE_CHECKING:
    from csm_core.config import Settings

Cost = Callable[[Segment], int]
"""Positions a context segment takes in the prompt."""

DEFAULT_MAX_POSITIONS = 2048
"""The position window assumed for a tts stage that does not state its own (CSM-1B's)."""


class ContextBudgetError(CsmError):
    """The current turn alone does not fit the context budget."""


@dataclass(frozen=True)
class ContextChoice:
    """What :func:`choose_context` kept: ``segments`` in conversation order (pinned, history, current),
    ``positions`` they cost, indices into ``history`` that were ``dropped`` or kept ``text_only``, and
    ``events`` describing that (empty when everything fit)."""

    segments: tuple[Segment, ...]
    positions: int
    dropped: tuple[int, ...] = ()
    text_only: tuple[int, ...] = ()
    events: tuple[str, ...] = ()


def text_only(segment: Segment) -> Segment:
    return replace(segment, codes=None)


def choose_context(
    history: Sequence[Segment],
    *,
    budget: int,
    cost: Cost,
    current: Sequence[Segment] = (),
    pinned: Sequence[Segment] = (),
    reserved: int = 0,
    keep_text_of_dropped: bool = False,
) -> ContextChoice:
    """Apply the policy of the module docstring.

    ``history`` are the earlier turns (oldest first), ``current`` the segments of this turn that are
    always kept, ``pinned`` the voice profile(s), ``reserved`` positions taken by the rest of the prompt
    (the text to speak), ``budget`` the positions available for all of it.
    """
    if budget < 1:
        raise ValueError(f"budget={budget!r}: must be >= 1 position")
    required = reserved + sum(cost(s) for s in current)
    if required > budget:
        raise ContextBudgetError(
            f"the current turn needs {required} positions (its context segment and the text to speak) but the "
            f"context budget is {budget}: shorten the text or the user's audio, lower generation.max_new_frames, "
            "or raise context.budget_positions"
        )
    used, events = required, []
    kept_pinned = []
    for segment in pinned:
        if used + cost(segment) <= budget:
            kept_pinned.append(segment)
            used += cost(segment)
        else:
            events.append(
                f"context: the voice profile ({cost(segment)} positions) does not fit the {budget}-position "
                f"budget beside the current turn ({used} positions): dropped for this turn"
            )
    chosen: dict[int, Segment] = {}
    dropped, shortened = [], []
    audio_allowed = True
    for index in range(len(history) - 1, -1, -1):
        segment = history[index]
        if audio_allowed and used + cost(segment) <= budget:
            chosen[index] = segment
            used += cost(segment)
            continue
        audio_allowed = False
        short = text_only(segment)
        if keep_text_of_dropped and used + cost(short) <= budget:
            chosen[index] = short
            used += cost(short)
            if segment.codes is not None:
                shortened.append(index)
            continue
        dropped = list(range(index + 1))
        break
    if shortened:
        frames = sum(history[i].codes.shape[1] for i in shortened)
        events.append(
            f"context: kept {len(shortened)} older turn(s) as text only (their {frames} audio frames do not fit "
            f"the {budget}-position budget)"
        )
    if dropped:
        events.append(
            f"context: dropped the {len(dropped)} oldest turn(s) ({sum(cost(history[i]) for i in dropped)} "
            f"positions) to fit the {budget}-position budget"
        )
    segments = (*kept_pinned, *(chosen[i] for i in sorted(chosen)), *current)
    return ContextChoice(segments, used, tuple(dropped), tuple(sorted(shortened)), tuple(events))


def utf8_token_bound(text: str) -> int:
    """An upper bound of a byte-level BPE tokenizer's tokens for ``text`` with BOS and EOS (every token
    covers at least one UTF-8 byte). Exact for the presets' byte tokenizer; Llama 3's uses fewer."""
    return len(text.encode("utf-8")) + 2


def segment_cost(text_tokens: Callable[[str], int] = utf8_token_bound) -> Cost:
    """The positions a segment takes in CSM's prompt (see :mod:`csm_core.generation.prompt`):
    ``text_tokens("[speaker]text")`` + (F audio frames + 1 end frame, when it has audio)."""

    def cost(segment: Segment) -> int:
        audio = 0 if segment.codes is None else int(segment.codes.shape[1]) + 1
        return int(text_tokens(f"[{segment.speaker}]{segment.text}")) + audio

    return cost


def stage_window(stage: object) -> tuple[int, Callable[[str], int]]:
    """(positions, text-token counter) of a tts ``stage``: its own when it claims the ``position_window``
    capability (:class:`csm_core.stages.PositionWindow`), else :data:`DEFAULT_MAX_POSITIONS` and
    :func:`utf8_token_bound`."""
    window = position_window(stage)
    if window is None:
        return DEFAULT_MAX_POSITIONS, utf8_token_bound
    return window.max_positions, window.count_text_tokens


def context_for_turn(
    history: Sequence[Segment],
    profile: Segment | None,
    user: Segment | None,
    settings: "Settings",
    *,
    speaker: int,
    text: str,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    text_tokens: Callable[[str], int] = utf8_token_bound,
) -> tuple[tuple[Segment, ...], list[str]]:
    """The context tuple for speaking ``text`` as ``speaker`` after ``history`` (+ the ``user`` segment),
    with the voice ``profile`` pinned, and the events to report.

    With ``generation.trim_context = false`` nothing is chosen: the whole context is returned (the prompt
    then fails with a budget error if it does not fit). Budget: ``max_positions -
    generation.frame_limit()`` (the model's window minus the frames to generate), or the smaller
    ``context.budget_positions``; ``context.keep_text_of_dropped`` as in :func:`choose_context`.
    ``text_tokens`` counts the CSM text tokenizer's tokens (the default is an upper bound, exact for the
    presets); :func:`stage_window` gives both from the tts stage.
    """
    if not settings.generation.trim_context:
        # Trimming switched off: everything goes to the prompt, which fails with a budget error if it
        # does not fit; nothing is dropped behind the user's back.
        kept = (() if profile is None else (profile,)) + tuple(history) + (() if user is None else (user,))
        return kept, []
    policy = settings.context
    budget = max_positions - settings.generation.frame_limit()
    if budget < 1:
        raise ContextBudgetError(
            f"generation.max_new_frames={settings.generation.frame_limit()} leaves no room in the model's "
            f"{max_positions}-position window: lower it"
        )
    if policy.budget_positions is not None:
        budget = min(budget, policy.budget_positions)
    cost = segment_cost(text_tokens)
    choice = choose_context(
        history,
        budget=budget,
        cost=cost,
        current=() if user is None else (user,),
        pinned=() if profile is None else (profile,),
        reserved=cost(Segment(speaker, text)),
        keep_text_of_dropped=policy.keep_text_of_dropped,
    )
    return choice.segments, list(choice.events)
