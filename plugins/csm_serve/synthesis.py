"""One utterance of the server, run on the scheduler's worker thread: a :class:`SpeechSpec` in, audio
chunks out through ``emit`` as the tts stage makes them (one per 80 ms frame).

The server needs per request what ``Pipeline.speak`` takes from the settings: the speaker id, the
voice profile (a cloned voice instead of ``[voice]``) and sampling overrides (``/api/generate``). So
this module builds the :class:`~csm_core.stages.SpeechRequest` itself from the core's public pieces,
as :mod:`csm_core.utterances` does: the emotion map (:func:`csm_core.emotion.speech_params`), the context
policy (:func:`csm_core.context_policy.context_for_turn`), and the tts stage run through the
``run_stage`` hook so that optimizers and tracing wrap it as they wrap every turn.

``emit`` may raise (the request was cancelled): that exception leaves the frame loop between two
frames and closes the stage's generator, so generation stops within one frame.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from csm_core.context_policy import context_for_turn, stage_window
from csm_core.emotion import speech_params
from csm_core.pipeline import Pipeline, Turn
from csm_core.stages import Reply, Segment, SpeechRequest

Emit = Callable[[np.ndarray], None]

ROW_ADMISSION: contextvars.ContextVar[Callable[["SpeechRow"], None] | None] = contextvars.ContextVar(
    "csm_serve_row_admission", default=None)
"""Set by the scheduler (on its worker thread, while a job's ``work`` runs) when it batches requests:
:func:`synthesize` then hands the prepared request to it as a :class:`SpeechRow` (prefilled into a slot of
the batch session) and returns at once; the scheduler streams the row's frames through ``emit``."""


@dataclass(frozen=True)
class SpeechSpec:
    """What to say and how: ``text``; ``emotion`` (None: the generation settings); ``speaker`` id
    (None: the configured one); ``profile``: the voice segment to pin (``"configured"``: the ``[voice]``
    profile, None: none); sampling overrides ``temperature``/``top_k`` (None: from the settings)."""

    text: str
    emotion: str | None = None
    speaker: int | None = None
    profile: Segment | None | str = "configured"
    temperature: float | None = None
    top_k: int | None = None


@dataclass
class SpeechResult:
    """What an utterance produced: ``frames`` (80 ms each), the text's ``input_tokens``, ``samples`` emitted, the seconds spent
    generating, time to first audio from the start of the run, and the pipeline's ``events``."""

    frames: int = 0
    input_tokens: int = 0
    samples: int = 0
    sample_rate: int = 24_000
    generation_seconds: float = 0.0
    first_audio_seconds: float | None = None
    events: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def real_time_factor(self) -> float | None:
        return self.generation_seconds / self.audio_seconds if self.samples else None


@dataclass
class SpeechRow:
    """A request admitted to the scheduler's batch session: the :class:`SpeechRequest`, where its audio
    goes (``emit``) and the :class:`SpeechResult` it fills in."""

    request: SpeechRequest
    emit: Emit
    result: SpeechResult
    started: float = field(default_factory=time.perf_counter)

    def chunk(self, chunk) -> None:
        """One :class:`~csm_core.stages.SpeechChunk` of this row (``emit`` may raise: cancelled)."""
        result = self.result
        if result.first_audio_seconds is None:
            result.first_audio_seconds = time.perf_counter() - self.started
        result.frames += int(chunk.codes.shape[1]) if chunk.codes is not None else 1
        result.samples += len(chunk.samples)
        result.generation_seconds = time.perf_counter() - self.started
        self.emit(chunk.samples)

    def close(self) -> None:
        self.result.generation_seconds = time.perf_counter() - self.started


def synthesize(pipeline: Pipeline, spec: SpeechSpec, emit: Emit, result: SpeechResult | None = None) -> SpeechResult:
    """Speak ``spec`` with ``pipeline``'s tts stage, handing each chunk to ``emit``; returns (and fills
    in as it goes, when given) the :class:`SpeechResult`. Raises the stage's errors
    (:class:`~csm_core.errors.CsmError` for a request that cannot be spoken, e.g. text too long for
    the model's window) and whatever ``emit`` raises."""
    result = result if result is not None else SpeechResult()
    settings = pipeline.settings
    stage = pipeline.stage("tts")
    result.sample_rate = stage.sample_rate
    params = speech_params(settings, spec.emotion, result.events.append)
    overrides = {name: value for name, value in (("temperature", spec.temperature), ("top_k", spec.top_k))
                 if value is not None}
    params = replace(params, **overrides)
    speaker = settings.speaker if spec.speaker is None else spec.speaker
    profile = pipeline.voice_profile() if spec.profile == "configured" else spec.profile
    max_positions, text_tokens = stage_window(stage)
    context, events = context_for_turn(
        (), profile, None, settings, speaker=speaker, text=spec.text,
        max_positions=max_positions, text_tokens=text_tokens,
    )
    result.events.extend(events)
    result.input_tokens = text_tokens(spec.text)
    request = SpeechRequest(text=spec.text, speaker=speaker, params=params, context=context)
    admit = ROW_ADMISSION.get()
    if admit is not None:  # continuous batching: the scheduler's session speaks it (no run_stage hook)
        admit(SpeechRow(request, emit, result))
        return result
    turn = Turn(reply=Reply(text=spec.text, emotion=spec.emotion or "neutral"), params=params)
    started = time.perf_counter()

    def generate() -> None:
        for chunk in stage.speak(request):
            if result.first_audio_seconds is None:
                result.first_audio_seconds = time.perf_counter() - started
            result.frames += int(chunk.codes.shape[1]) if chunk.codes is not None else 1
            result.samples += len(chunk.samples)
            emit(chunk.samples)

    try:
        pipeline.plugins.hook.run_stage(stage="tts", call=generate, turn=turn)
    finally:
        result.generation_seconds = time.perf_counter() - started
        result.events.extend(turn.metrics.events)
    return result
