"""``GET /v1/audio/voices``, ``POST /v1/audio/voices`` (clone), ``DELETE /v1/audio/voices/{name}``.

Creating a voice (multipart form): ``file`` (the reference clip: WAV, FLAC or OGG, any rate, at most
``max_upload_bytes`` and ``max_upload_seconds``), ``transcript`` (what the clip says), ``name`` (see
:func:`csm_serve.voices.check_name`) and optionally ``speaker`` (its speaker id). The clip is checked
and decoded off the event loop, then encoded into a voice profile on the worker thread, so a voice
that was created can be used at once. Answers 201 with the voice; 409 when the name is taken.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from csm_core.audio import MIMI_SAMPLE_RATE, read_audio
from csm_core.config import MAX_SPEAKER_ID
from csm_core.errors import CsmError
from csm_serve.auth import require_key
from csm_serve.checks import checked_text
from csm_serve.errors import ApiError, bad_request
from csm_serve.options import DEFAULT_VOICE, OPENAI_VOICES
from csm_serve.scheduler import Job
from csm_serve.voices import MAX_TRANSCRIPT_CHARS, VoiceExists, check_name

router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/v1/audio/voices", summary="The voices: default, OpenAI's names and the cloned ones")
async def list_voices(request: Request) -> dict:
    state = request.app.state.serve
    builtin = [{"id": DEFAULT_VOICE, "name": DEFAULT_VOICE, "object": "voice", "type": "default"}]
    for name in OPENAI_VOICES:
        target = state.options.voice_map.get(name, DEFAULT_VOICE)
        builtin.append({"id": name, "name": name, "object": "voice", "type": "alias", "maps_to": target})
    cloned = [voice.to_dict() for voice in await run_in_threadpool(state.voices.list)]
    data = builtin + cloned
    return {"object": "list", "data": data, "voices": [item["id"] for item in data]}


async def read_clip(upload: UploadFile, state) -> "object":
    """The uploaded clip as 24 kHz mono audio; 400 naming what is wrong with it."""
    limit = state.options.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"the clip is larger than {limit} bytes", param="file", code="request_too_large")
    if not data:
        raise bad_request("the clip is empty: upload a WAV, FLAC or OGG file", param="file", code="invalid_audio")
    path = state.voices.temporary_clip()

    def decode():
        try:
            path.write_bytes(data)
            return read_audio(path, MIMI_SAMPLE_RATE, "the uploaded clip",
                              max_seconds=state.options.max_upload_seconds)
        finally:
            path.unlink(missing_ok=True)

    try:
        return await run_in_threadpool(decode)
    except CsmError as exc:
        raise bad_request(str(exc), param="file", code="invalid_audio") from None


@router.post("/v1/audio/voices", status_code=201, summary="Clone a voice from a clip and its transcript")
async def create_voice(
    request: Request,
    file: UploadFile = File(description="the reference clip (WAV, FLAC or OGG, any rate)"),
    transcript: str = Form(description="what the clip says"),
    name: str = Form(description="the voice's name: 1-64 letters, digits, '-' or '_'"),
    speaker: int | None = Form(None, ge=0, le=MAX_SPEAKER_ID, description="the clip's speaker id"),
) -> JSONResponse:
    state = request.app.state.serve
    check_name(name)
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise bad_request(f"transcript is {len(transcript)} characters; at most {MAX_TRANSCRIPT_CHARS}",
                          param="transcript", code="string_above_max_length")
    transcript = checked_text(transcript, state.options, "transcript")
    try:
        state.voices.check_new(name)
    except VoiceExists as exc:
        raise exc.api_error() from None
    clip = await read_clip(file, state)
    job = Job("voice", lambda pipeline, control: state.voices.add(name, clip, transcript, speaker, pipeline))
    voice = await state.run(job, request)
    return JSONResponse(voice.to_dict(), status_code=201)


@router.delete("/v1/audio/voices/{name}", summary="Delete a cloned voice")
async def delete_voice(name: str, request: Request) -> dict:
    state = request.app.state.serve
    check_name(name)
    if not await run_in_threadpool(state.voices.delete, name):
        raise ApiError(404, f"voice {name!r} not found", param="name", code="voice_not_found")
    return {"id": name, "object": "voice.deleted", "deleted": True}
