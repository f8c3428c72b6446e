"""``POST /v1/conversation/turn``: one whole conversation turn, from the user's audio or text.

Form fields (multipart, or urlencoded without a file): ``conversation_id`` (leave it out to start a
conversation; the answer names the new id), ``text`` or ``file`` (the user's speech: WAV, FLAC or OGG,
any rate; exactly one of the two), ``response_format`` (the reply audio's format, ``wav`` by default),
``stream`` (``true``: server-sent events as the reply is spoken).

The turn runs on the worker thread through :meth:`csm_core.pipeline.Pipeline.turn`: the tokenizer,
transcriber and sentiment stages for audio, then the llm writes the reply and its emotion, and CSM speaks
it with the conversation so far as context. The user's turn and the reply are added to the
conversation only when the turn completes (a cancelled or failed turn leaves it as it was).

Answer (JSON): ``conversation_id``, ``turn`` (turns so far), ``transcript``, ``sentiment``, ``emotion``,
``reply``, ``audio`` (base64 of the reply in ``response_format``), ``response_format``, ``sample_rate``,
``frames``, ``metrics``, ``events``. With ``stream=true``: ``conversation.audio.delta`` events with base64
audio as it is made, then ``conversation.turn.done`` carrying all of the above but ``audio``.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from csm_core.conversation import Conversation
from csm_serve.auth import require_key
from csm_serve.checks import checked_text
from csm_serve.errors import bad_request
from csm_serve.formats import check_format, encode_whole, open_encoder
from csm_serve.routes_voices import read_clip
from csm_serve.scheduler import Job
from csm_serve.speed import Stretcher
from csm_serve.streaming import JobStream
from csm_serve.synthesis import SpeechResult

router = APIRouter(dependencies=[Depends(require_key)])


def turn_summary(turn, key: str, conversation: Conversation, fmt: str, sample_rate: int) -> dict:
    """The JSON of a finished turn (without the audio)."""
    data = turn.to_dict()
    metrics = data["metrics"]
    return {
        "conversation_id": key, "turn": conversation.turns, "transcript": data["transcript"],
        "sentiment": data["sentiment"], "emotion": data["emotion"], "reply": data["reply"],
        "response_format": fmt, "sample_rate": sample_rate, "frames": turn.metrics.frames,
        "metrics": {"time_to_first_audio_s": metrics["time_to_first_audio_s"],
                    "real_time_factor": metrics["real_time_factor"], "audio_seconds": metrics["audio_seconds"]},
        "events": metrics["events"],
    }


@router.post("/v1/conversation/turn", summary="One conversation turn: hear (or read) the user, reply in speech")
async def conversation_turn(
    request: Request,
    conversation_id: str | None = Form(None, description="a conversation this server started; none: a new one"),
    text: str | None = Form(None, description="the user's words (instead of file)"),
    file: UploadFile | None = File(None, description="the user's speech (instead of text)"),
    response_format: str = Form("wav", description="the reply audio's format"),
    stream: bool = Form(False, description="stream the reply as server-sent events"),
):
    state = request.app.state.serve
    if (text is None) == (file is None):
        raise bad_request("give the user's turn as text or as an audio file (exactly one of the two)",
                          param="text", code="invalid_value")
    check_format(response_format)
    if text is not None:
        text = checked_text(text, state.options, "text")
    if conversation_id is not None:
        key, conversation = conversation_id, state.conversations.get(conversation_id)
    else:
        key, conversation = state.conversations.start()
    audio = await read_clip(file, state) if file is not None else None

    def work(pipeline, control):
        pipeline.conversation = conversation
        try:
            turn = pipeline.turn(audio=audio, text=text, on_audio=control.emit)
        finally:
            pipeline.conversation = Conversation()
        conversation.turns += 1
        metrics = turn.metrics
        job.result = SpeechResult(frames=metrics.frames, samples=len(turn.audio.samples),
                                  sample_rate=turn.audio.sample_rate, generation_seconds=metrics.generation_seconds)
        return turn

    job = Job("conversation", work)
    sample_rate = state.sample_rate
    if not stream:
        turn = await state.run(job, request)
        body = turn_summary(turn, key, conversation, response_format, sample_rate)
        audio_bytes = await run_in_threadpool(encode_whole, turn.audio.samples, turn.audio.sample_rate, response_format)
        return {**body, "audio": base64.b64encode(audio_bytes).decode("ascii")}

    jobs = JobStream.open(state, job, request)
    first = await jobs.first()

    def done(turn) -> dict:
        return {"type": "conversation.turn.done", **turn_summary(turn, key, conversation, response_format, sample_rate)}

    events = jobs.sse(first, open_encoder(response_format, sample_rate), Stretcher(1.0, sample_rate), done,
                      delta_type="conversation.audio.delta")
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"X-Request-Id": job.id, "X-Conversation-Id": key, "X-Accel-Buffering": "no"})
