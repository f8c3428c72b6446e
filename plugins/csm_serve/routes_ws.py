"""``WebSocket /v1/audio/speech/stream``: text in as it is written, speech out as each sentence completes.

Client -> server (JSON text messages):

- ``{"type": "config", "voice": ..., "instructions": ..., "speed": ...}``: how to speak (optional, any
  time; applies to sentences not yet started);
- ``{"type": "text", "text": "..."}``: more text; each sentence it completes is spoken
  (:mod:`csm_serve.sentences`);
- ``{"type": "flush"}``: speak the text held back so far even without a sentence end;
- ``{"type": "cancel"}``: stop the sentence being spoken (within one 80 ms frame) and drop the text
  and sentences waiting; the connection stays open;
- ``{"type": "close"}``: speak what is left, then the server sends ``done`` and closes.

Server -> client: ``{"type": "sentence.started", "index", "text", "request_id"}``; binary messages of
audio (24 kHz mono s16le PCM, one per frame, as made); ``{"type": "sentence.done", "index", "frames"}``;
``{"type": "cancelled", "index"}``; ``{"type": "error", "error": {...}}`` (OpenAI's shape: a bad
message, a full queue; the sentence at fault is not spoken); ``{"type": "done"}``.

Sentences are spoken one after another, in order, each as one job of the scheduler. The connection
holds one of the ``max_streams`` slots (none free: an error, then close code 1013); with an API key
configured the handshake must carry ``Authorization: Bearer <key>`` (else an error, close code 1008).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from csm_serve.auth import unauthorized, websocket_key_ok
from csm_serve.checks import checked_text
from csm_serve.errors import ApiError, bad_request
from csm_serve.formats import to_s16le
from csm_serve.instructions import emotion_for
from csm_serve.options import DEFAULT_VOICE
from csm_serve.scheduler import Cancelled, Chunk, Done, Failed, Job
from csm_serve.sentences import SentenceBuffer
from csm_serve.speed import Stretcher, check_speed
from csm_serve.streaming import failure_error
from csm_serve.synthesis import SpeechResult, SpeechSpec, synthesize
from csm_serve.voices import resolve_voice

router = APIRouter()
log = logging.getLogger("csm.serve")
MAX_PENDING = 64  # sentences waiting to be spoken on one connection
MAX_MESSAGE_CHARS = 16_384
_CLOSE = object()


@dataclass
class Delivery:
    """How the connection's sentences are spoken (``config`` messages change it)."""

    voice: object = DEFAULT_VOICE
    instructions: str | None = None
    speed: float = 1.0


class SpeechSession:
    """One WebSocket connection: the sentence buffer, the sentences waiting, the one being spoken."""

    def __init__(self, websocket: WebSocket):
        self.ws = websocket
        self.state = websocket.app.state.serve
        self.buffer = SentenceBuffer(self.state.options.max_text_chars)
        self.pending: asyncio.Queue = asyncio.Queue()
        self.delivery = Delivery()
        self.current: Job | None = None
        self.index = 0
        self.send_lock = asyncio.Lock()

    async def send_json(self, payload: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(payload))

    async def send_bytes(self, data: bytes) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(data)

    async def error(self, error: ApiError) -> None:
        await self.send_json({"type": "error", **error.body()})

    def queue_sentence(self, text: str) -> None:
        if self.pending.qsize() >= MAX_PENDING:
            raise ApiError(429, f"{MAX_PENDING} sentences are waiting already on this connection: send less text "
                           "at once, or cancel", type="rate_limit_error", code="too_much_text")
        self.pending.put_nowait((text, self.delivery))

    def cancel(self) -> None:
        while not self.pending.empty():
            item = self.pending.get_nowait()
            if item is _CLOSE:  # a close still closes
                self.pending.put_nowait(item)
                break
        self.buffer.clear()
        if self.current is not None:
            self.current.cancel("the client sent cancel")

    async def handle(self, message: dict) -> bool:
        """Act on one client message; False when the client asked to close."""
        kind = message.get("type")
        if kind == "text":
            text = message.get("text")
            if not isinstance(text, str):
                raise bad_request('a "text" message needs a "text" string', param="text")
            for sentence in self.buffer.feed(text):
                self.queue_sentence(sentence)
        elif kind == "flush":
            rest = self.buffer.flush()
            if rest:
                self.queue_sentence(rest)
        elif kind == "cancel":
            self.cancel()
        elif kind == "config":
            self.configure(message)
        elif kind == "close":
            rest = self.buffer.flush()
            if rest:
                self.queue_sentence(rest)
            self.pending.put_nowait(_CLOSE)
            return False
        else:
            raise bad_request(f"unknown message type {kind!r}: send config, text, flush, cancel or close",
                              param="type")
        return True

    def configure(self, message: dict) -> None:
        unknown = sorted(set(message) - {"type", "voice", "instructions", "speed"})
        if unknown:
            raise bad_request(f"unrecognized config field {unknown[0]!r}", param=unknown[0])
        delivery = self.delivery
        if "voice" in message:
            resolve_voice(message["voice"], self.state.voices, self.state.options)  # a 400 now, not later
            delivery = replace(delivery, voice=message["voice"])
        if "instructions" in message:
            if message["instructions"] is not None and not isinstance(message["instructions"], str):
                raise bad_request("instructions must be a string", param="instructions")
            delivery = replace(delivery, instructions=message["instructions"])
        if "speed" in message:
            speed = message["speed"]
            if not isinstance(speed, (int, float)) or isinstance(speed, bool):
                raise bad_request("speed must be a number", param="speed")
            check_speed(float(speed))
            delivery = replace(delivery, speed=float(speed))
        self.delivery = delivery

    async def receive_loop(self) -> None:
        while True:
            raw = await self.ws.receive_text()
            try:
                if len(raw) > MAX_MESSAGE_CHARS:
                    raise bad_request(f"a message is at most {MAX_MESSAGE_CHARS} characters", param="text")
                try:
                    message = json.loads(raw)
                except ValueError:
                    raise bad_request("a message must be a JSON object", param="type") from None
                if not isinstance(message, dict):
                    raise bad_request("a message must be a JSON object", param="type")
                if not await self.handle(message):
                    return
            except ApiError as exc:
                await self.error(exc)

    async def speak_loop(self) -> None:
        while True:
            item = await self.pending.get()
            if item is _CLOSE:
                await self.send_json({"type": "done"})
                return
            text, delivery = item
            try:
                await self.speak(text, delivery)
            except ApiError as exc:
                await self.error(exc)

    async def speak(self, text: str, delivery: Delivery) -> None:
        state = self.state
        text = checked_text(text, state.options, "text")
        choice = resolve_voice(delivery.voice, state.voices, state.options)
        use = emotion_for(delivery.instructions, state.settings.emotions)
        spec = SpeechSpec(text=text, emotion=use.emotion, speaker=choice.speaker)
        stretcher = Stretcher(delivery.speed, state.sample_rate)

        def work(pipeline, control):
            result = job.result = SpeechResult()
            synthesize(pipeline, replace(spec, profile=choice.profile(state.voices, pipeline)), control.emit, result)
            return result

        job = Job("websocket", work)
        index, self.index = self.index, self.index + 1
        self.current = state.submit(job)
        try:
            started = {"type": "sentence.started", "index": index, "text": text, "request_id": job.id}
            if use.note:
                started["note"] = use.note
            await self.send_json(started)
            while True:
                event = await job.next()
                if isinstance(event, Chunk):
                    data = to_s16le(stretcher.push(event.samples))
                elif isinstance(event, Done):
                    data = to_s16le(stretcher.finish())
                else:
                    data = b""
                if data:
                    await self.send_bytes(data)
                if isinstance(event, Done):
                    await self.send_json({"type": "sentence.done", "index": index, "frames": event.value.frames})
                    return
                if isinstance(event, Cancelled):
                    await self.send_json({"type": "cancelled", "index": index})
                    return
                if isinstance(event, Failed):
                    raise failure_error(event)
        finally:
            if not job.finished:
                job.cancel("the connection closed")
            self.current = None


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(websocket: WebSocket) -> None:
    state = websocket.app.state.serve
    await websocket.accept()
    if not websocket_key_ok(websocket):
        await websocket.send_text(json.dumps({"type": "error", **unauthorized(websocket.headers.get("authorization")).body()}))
        await websocket.close(code=1008)
        return
    try:
        state.check_ready()
        state.open_stream()
    except ApiError as exc:
        await websocket.send_text(json.dumps({"type": "error", **exc.body()}))
        await websocket.close(code=1013)
        return
    session = SpeechSession(websocket)
    receiver = asyncio.ensure_future(session.receive_loop())
    speaker = asyncio.ensure_future(session.speak_loop())
    try:
        await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_EXCEPTION)
        if receiver.done() and receiver.exception() is None and not speaker.done():
            await speaker  # the client sent close: finish speaking what is left
    except WebSocketDisconnect:
        pass
    finally:
        session.cancel()
        for task in (receiver, speaker):
            task.cancel()
        await asyncio.gather(receiver, speaker, return_exceptions=True)
        state.streams.release()
        try:
            await websocket.close()
        except (RuntimeError, WebSocketDisconnect):  # the client closed it already
            pass
        for task in (receiver, speaker):
            if task.done() and not task.cancelled() and task.exception() is not None \
                    and not isinstance(task.exception(), WebSocketDisconnect):
                log.error("websocket session failed: %r", task.exception())
