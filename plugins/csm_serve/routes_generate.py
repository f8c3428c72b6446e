"""``POST /api/generate``: EchoForge-style generation, a whole WAV file back.

JSON body: ``text``; ``speaker_id`` (CSM's speaker id, default the configured ``speaker``);
``temperature`` and ``top_k`` (override the settings and the emotion map for this request);
``style`` or ``emotion`` (an emotion of the emotion map; both given must agree); ``voice`` (a voice
name, as in ``/v1/audio/speech``; with ``speaker_id`` the id wins); ``device`` (must be the device
this server runs on: a different one is a 400, as the models are loaded once, on one device).

The answer is ``audio/wav`` with exact sizes (sent when complete), with ``X-Request-Id``,
``X-Frames`` (80 ms frames generated) and ``X-Emotion``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from csm_core.config import MAX_SPEAKER_ID
from csm_serve.auth import require_key
from csm_serve.checks import checked_emotion, checked_text
from csm_serve.errors import bad_request
from csm_serve.formats import encode_whole
from csm_serve.options import DEFAULT_VOICE
from csm_serve.scheduler import Job
from csm_serve.synthesis import SpeechResult, SpeechSpec, synthesize
from csm_serve.voices import resolve_voice

router = APIRouter(dependencies=[Depends(require_key)])


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    speaker_id: int | None = Field(None, ge=0, le=MAX_SPEAKER_ID)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_k: int | None = Field(None, ge=1, le=100_000)
    style: str | None = None
    emotion: str | None = None
    voice: str | None = None
    device: str | None = None


def same_device(requested: str, serving: str | None) -> bool:
    """``cuda`` names ``cuda:0`` and the other way round; ``auto`` matches whatever is serving."""
    requested = requested.strip().lower()
    serving = (serving or "").lower()
    normal = {"cuda": "cuda:0"}
    return requested == "auto" or normal.get(requested, requested) == normal.get(serving, serving)


@router.post("/api/generate", summary="EchoForge-style generation: text in, a WAV file out",
             response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
async def generate(body: GenerateBody, request: Request) -> Response:
    state = request.app.state.serve
    text = checked_text(body.text, state.options, "text")
    if body.device is not None and not same_device(body.device, state.device):
        raise bad_request(f"this server runs its models on {state.device!r}; device {body.device!r} cannot be "
                          "chosen per request (start the server with --device to change it)",
                          param="device", code="device_mismatch")
    if body.style is not None and body.emotion is not None and body.style != body.emotion:
        raise bad_request(f"style {body.style!r} and emotion {body.emotion!r} disagree: give one of them",
                          param="style", code="invalid_value")
    emotion = checked_emotion(body.style or body.emotion, state.settings.emotions,
                              "style" if body.style is not None else "emotion")
    choice = resolve_voice(body.voice or DEFAULT_VOICE, state.voices, state.options)
    speaker = body.speaker_id if body.speaker_id is not None else choice.speaker
    spec = SpeechSpec(text=text, emotion=emotion, speaker=speaker, temperature=body.temperature, top_k=body.top_k)
    chunks: list[np.ndarray] = []

    def work(pipeline, control):
        result = job.result = SpeechResult()
        synthesize(pipeline, replace(spec, profile=choice.profile(state.voices, pipeline)), control.emit, result)
        return result

    job = Job("generate", work)
    result = await state.run(job, request, on_chunk=chunks.append)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    wav = await run_in_threadpool(encode_whole, samples, result.sample_rate, "wav")
    return Response(wav, media_type="audio/wav",
                    headers={"X-Request-Id": job.id, "X-Frames": str(result.frames), "X-Emotion": emotion or "none"})
