"""Speaking several utterances: in batches when the ``batched-generation`` optimizer is on, else one by one.

:func:`speak_many` is the entry point. With ``batched-generation`` listed in ``settings.optimizers`` it
hands the tts stage's ``speak_batch`` up to ``[options.batched-generation] max_batch`` utterances at a
time (one backbone/decoder batch, per-row end of speech); without it, it calls
:meth:`csm_core.pipeline.Pipeline.speak` for each text. Each result says which path ran, so the two can be
compared side by side (codes are identical under greedy decoding).

Nothing heavy is imported here (the tts stage imports torch when it is built).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from csm_core.audio import Audio
from csm_core.config import plugin_options
from csm_core.emotion import speech_params
from csm_core.errors import CsmError
from csm_core.metrics import StageTiming, peak_rss_bytes
from csm_core.pipeline import Pipeline, Turn
from csm_core.stages import Reply, Segment, SpeechRequest

__all__ = ["OPTIMIZER_NAME", "BatchedGenerationOptions", "SpokenTurn", "speak_many"]

OPTIMIZER_NAME = "batched-generation"
SpeakPath = Literal["batched", "sequential"]


class BatchedGenerationOptions(BaseModel):
    """``[options.batched-generation]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(
        4, ge=1, le=64, description="utterances generated together at most (rows of the KV caches)"
    )


@dataclass
class SpokenTurn(Turn):
    """A :class:`~csm_core.pipeline.Turn` of :func:`speak_many`, with how it was generated.

    ``path``: ``"batched"`` (``speak_batch``) or ``"sequential"`` (``Pipeline.speak``); ``batch_size``:
    rows generated together with it (1 on the sequential path). On the batched path the tts stage's
    timing and ``generation_seconds`` are those of the whole batch.
    """

    path: SpeakPath = "sequential"
    batch_size: int = 1

    def to_dict(self) -> dict:
        return {**super().to_dict(), "path": self.path, "batch_size": self.batch_size}


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
    conversation or used as context for another. Batched when the ``batched-generation`` optimizer is
    enabled, else one by one (see the module docstring).
    """
    texts = _check_texts(texts)
    settings = pipeline.settings
    if OPTIMIZER_NAME not in settings.optimizers:
        results = []
        for text in texts:
            turn = pipeline.speak(text, emotion=emotion, context=context)
            results.append(SpokenTurn(**{f.name: getattr(turn, f.name) for f in fields(Turn)}))
        return results
    options = plugin_options(settings, OPTIMIZER_NAME, BatchedGenerationOptions)
    pipeline.require("tts")
    segments = tuple(pipeline.conversation.segments) if context is None else context
    results = []
    for first in range(0, len(texts), options.max_batch):
        results += _speak_batch(pipeline, texts[first : first + options.max_batch], emotion, segments)
    return results


def _speak_batch(
    pipeline: Pipeline, texts: list[str], emotion: str | None, context: tuple[Segment, ...]
) -> list[SpokenTurn]:
    settings = pipeline.settings
    turns = [
        SpokenTurn(reply=Reply(text=text, emotion=emotion or "neutral"), path="batched", batch_size=len(texts))
        for text in texts
    ]
    started = time.perf_counter()
    speaker = pipeline.stage("tts")  # time to first audio counts loading (as Pipeline.speak); the run does not
    if not hasattr(speaker, "speak_batch"):
        raise CsmError(
            f"the tts stage {settings.stages.tts!r} cannot speak in batches (it has no speak_batch); "
            f"remove {OPTIMIZER_NAME!r} from optimizers to speak one by one"
        )

    def report(message: str) -> None:  # e.g. an emotion the map does not hold: every row's event
        for turn in turns:
            turn.metrics.events.append(message)

    params = speech_params(settings, emotion, report)
    requests = [SpeechRequest(text=t, speaker=settings.speaker, params=params, context=context) for t in texts]
    chunks: list[list[np.ndarray]] = [[] for _ in texts]
    codes: list[list[np.ndarray]] = [[] for _ in texts]
    run_started = time.perf_counter()

    def generate() -> None:
        for row, chunk in speaker.speak_batch(requests):
            if turns[row].metrics.time_to_first_audio_s is None:
                turns[row].metrics.time_to_first_audio_s = time.perf_counter() - started
            chunks[row].append(chunk.samples)
            codes[row].append(chunk.codes)

    # run_stage wrappers (optimizers) act around the whole batch; they see the first row's turn
    pipeline.plugins.hook.run_stage(stage="tts", call=generate, turn=turns[0])
    seconds = time.perf_counter() - run_started
    timing = StageTiming(
        stage="tts", implementation=settings.stages.tts, backend=settings.backend_for("tts"),
        seconds=seconds, peak_rss_bytes=peak_rss_bytes(), peak_device_bytes=None,
    )
    for turn, row_chunks, row_codes in zip(turns, chunks, codes):
        samples = np.concatenate(row_chunks) if row_chunks else np.zeros(0, dtype=np.float32)
        turn.params = params
        turn.audio = Audio(samples.astype(np.float32, copy=False), speaker.sample_rate)
        turn.reply_codes = np.concatenate(row_codes, axis=1) if row_codes else None
        turn.metrics.stages.append(timing)
        turn.metrics.generation_seconds = seconds
        turn.metrics.audio_seconds = turn.audio.duration_s
        turn.metrics.frames = 0 if turn.reply_codes is None else int(turn.reply_codes.shape[1])
    return turns
