"""Speaking several utterances: in batches of ``generation.max_batch`` when that is set, else one by one.

:func:`speak_many` is the entry point. With ``generation.max_batch`` set
(:class:`csm_core.config.GenerationSettings`) it hands up to that many texts at a time to
:meth:`csm_core.pipeline.Pipeline.speak_batch` (the tts stage's ``speak_batch``: on the csm stage its
continuous-batching session, each text in a row of its own with its own end of speech); unset, it calls
:meth:`csm_core.pipeline.Pipeline.speak` for each text. Both build each text's request the same way
(voice profile, context policy, emotion map: ``Pipeline._speak``). Each result says which path ran, so
the two can be compared side by side (codes are identical, under greedy decoding and seeded sampling).

Nothing heavy is imported here (the tts stage imports torch when it is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

from csm_core.errors import CsmError
from csm_core.pipeline import Pipeline, Turn
from csm_core.stages import Segment

__all__ = ["SpokenTurn", "speak_many"]

SpeakPath = Literal["batched", "sequential"]


@dataclass
class SpokenTurn(Turn):
    """A :class:`~csm_core.pipeline.Turn` of :func:`speak_many`, with how it was generated.

    ``path``: ``"batched"`` (``Pipeline.speak_batch``) or ``"sequential"`` (``Pipeline.speak``);
    ``batch_size``: rows generated together with it (1 on the sequential path). On the batched path the
    tts stage's timing and ``generation_seconds`` are those of the whole batch.
    """

    path: SpeakPath = "sequential"
    batch_size: int = 1

    def to_dict(self) -> dict:
        return {**super().to_dict(), "path": self.path, "batch_size": self.batch_size}


def _spoken(turn: Turn, path: SpeakPath, batch_size: int) -> SpokenTurn:
    return SpokenTurn(**{f.name: getattr(turn, f.name) for f in fields(Turn)}, path=path, batch_size=batch_size)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise CsmError("speak_many: texts must be a sequence of strings, got one string; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise CsmError("speak_many: no texts given; pass at least one text to speak")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise CsmError(f"speak_many: texts[{index}]={text!r} must be a non-empty string")
    return texts


def speak_many(
    pipeline: Pipeline,
    texts: Sequence[str],
    *,
    emotion: str | None = None,
    context: tuple[Segment, ...] | None = None,
) -> list[SpokenTurn]:
    """Speak each of ``texts`` (as the configured speaker, after ``context``; None: the conversation so far).

    Returns one :class:`SpokenTurn` per text, in order. Utterances are independent: none is added to the
    conversation or used as context for another. Batched when ``generation.max_batch`` is set, else one
    by one (see the module docstring).
    """
    texts = _check_texts(texts)
    limit = pipeline.settings.generation.max_batch
    if limit is None:
        return [_spoken(pipeline.speak(text, emotion=emotion, context=context), "sequential", 1) for text in texts]
    segments = tuple(pipeline.conversation.segments) if context is None else tuple(context)
    results = []
    for first in range(0, len(texts), limit):
        batch = texts[first : first + limit]
        turns = pipeline.speak_batch(batch, emotion=emotion, context=segments)
        results += [_spoken(turn, "batched", len(batch)) for turn in turns]
    return results
