"""``POST /v1/audio/speech`` as OpenAI defines it, and ``GET /v1/models``.

The body: ``model`` (one of ``[options.serve] models``), ``input`` (at most ``max_text_chars``),
``voice`` (a name or ``{"id": name}``, see :mod:`csm_serve.voices`), ``instructions`` (mapped to an
emotion, :mod:`csm_serve.instructions`), ``response_format`` (mp3 by default, :mod:`csm_serve.formats`),
``speed`` (0.25-4.0, :mod:`csm_serve.speed`), ``stream_format`` (``audio``: the file's bytes as they
are made; ``sse``: server-sent events). Unknown fields are refused, as OpenAI refuses them.

Response headers: ``X-Request-Id``; ``X-Voice`` (the voice used); ``X-Emotion`` (the emotion used, or
``none``); ``X-Instructions-Note`` when instructions were not used as given; ``X-Accel-Buffering: no``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from csm_serve.auth import require_key
from csm_serve.checks import checked_model, checked_text, header_value
from csm_serve.formats import CONTENT_TYPES, check_format, open_encoder
from csm_serve.instructions import emotion_for
from csm_serve.scheduler import Job
from csm_serve.speed import Stretcher, check_speed
from csm_serve.streaming import ClientGone, JobStream
from csm_serve.synthesis import SpeechResult, SpeechSpec, synthesize
from csm_serve.voices import resolve_voice

router = APIRouter(dependencies=[Depends(require_key)])
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but the metrics do


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class SpeechBody(BaseModel):
    """The body of ``POST /v1/audio/speech``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a served model name, see GET /v1/models")
    input: str = Field(description="the text to speak")
    voice: str | VoiceId = Field(description="a voice name, or {\"id\": name} of a cloned voice")
    instructions: str | None = Field(None, max_length=4096, description="delivery; an emotion named here is used")
    response_format: str = Field("mp3", description="mp3, opus, aac, flac, wav or pcm")
    speed: float = Field(1.0, description="0.25 to 4.0")
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio bytes, or server-sent events")


def speech_headers(job: Job, voice_label: str, emotion: str | None, note: str | None) -> dict[str, str]:
    headers = {"X-Request-Id": job.id, "X-Voice": header_value(voice_label), "X-Emotion": emotion or "none",
               "X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
    if note:
        headers["X-Instructions-Note"] = header_value(note)
    return headers


def speech_done(result: SpeechResult) -> dict:
    """The ``speech.audio.done`` event: usage in OpenAI's fields (output tokens are audio frames)."""
    usage = {"input_tokens": result.input_tokens, "output_tokens": result.frames,
             "total_tokens": result.input_tokens + result.frames}
    return {"type": "speech.audio.done", "usage": usage}


@router.post("/v1/audio/speech", summary="Speak text (OpenAI-compatible)",
             responses={200: {"content": {t: {} for t in set(CONTENT_TYPES.values()) | {"text/event-stream"}}}})
async def create_speech(body: SpeechBody, request: Request):
    state = request.app.state.serve
    checked_model(body.model, state.options)
    text = checked_text(body.input, state.options)
    check_format(body.response_format)
    check_speed(body.speed)
    choice = resolve_voice(body.voice if isinstance(body.voice, str) else {"id": body.voice.id},
                           state.voices, state.options)
    use = emotion_for(body.instructions, state.settings.emotions)
    spec = SpeechSpec(text=text, emotion=use.emotion, speaker=choice.speaker)
    sample_rate = state.sample_rate
    encoder = open_encoder(body.response_format, sample_rate)
    stretcher = Stretcher(body.speed, sample_rate)

    def work(pipeline, control):
        result = job.result = SpeechResult()
        synthesize(pipeline, replace(spec, profile=choice.profile(state.voices, pipeline)), control.emit, result)
        return result

    job = Job("speech", work)
    stream = JobStream.open(state, job, request)
    try:
        first = await stream.first()
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    headers = speech_headers(job, choice.label, use.emotion, use.note)
    if body.stream_format == "sse":
        return StreamingResponse(stream.sse(first, encoder, stretcher, speech_done), media_type="text/event-stream",
                                 headers=headers)
    return StreamingResponse(stream.audio(first, encoder, stretcher), media_type=CONTENT_TYPES[body.response_format],
                             headers=headers)


@router.get("/v1/models", summary="The model names this server accepts")
async def list_models(request: Request) -> dict:
    options = request.app.state.serve.options
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "csm-multi"}
                                       for name in options.models]}
