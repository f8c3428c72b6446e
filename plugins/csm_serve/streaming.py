"""A job's events as an HTTP response: raw audio bytes or server-sent events, as frames are made.

:class:`JobStream` owns a submitted job and one stream slot for the life of the response. Before the
response starts, :meth:`JobStream.first` waits for the job's first event while watching the client:
a job that fails before any audio becomes a proper OpenAI error (400/500) instead of a 200 with an
empty body, and a client that leaves while its request waits cancels it. Once streaming:

- the generators cancel the job in ``finally``: a client that disconnects (Starlette cancels the
  response task) stops generation within one frame;
- a job that fails after audio was sent ends the audio stream early (the status is already 200) and,
  for SSE, sends an ``error`` event in OpenAI's shape first. Both are logged.

The SSE events follow OpenAI: ``speech.audio.delta`` with base64 ``audio`` (chunks of the same bytes
the audio stream carries), then ``speech.audio.done`` with ``usage`` (input_tokens: the text's tokens,
output_tokens: the audio frames generated).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import AsyncIterator, Callable

from fastapi import Request

from csm_serve.errors import ApiError
from csm_serve.formats import Encoder
from csm_serve.scheduler import Cancelled, Chunk, Done, Event, Failed, Job
from csm_serve.speed import Stretcher
from csm_serve.state import ServerState

log = logging.getLogger("csm.serve")


class ClientGone(Exception):
    """The client disconnected before the response started."""


def failure_error(event: Event) -> ApiError:
    """The ApiError of a failed or cancelled event."""
    if isinstance(event, Failed):
        as_api_error = getattr(event.error, "api_error", None)  # an error that knows its own status
        if callable(as_api_error):
            return as_api_error()
        if event.client_error:
            return ApiError(400, str(event.error), code="generation_refused")
        return ApiError(500, f"generation failed: {type(event.error).__name__}: {event.error}",
                        type="server_error", code="generation_failed")
    if isinstance(event, Cancelled):
        return ApiError(503, f"the request was cancelled: {event.reason}", type="server_error", code="cancelled")
    raise TypeError(f"not a failure: {event!r}")


async def _disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class JobStream:
    """A submitted job, the stream slot it holds, and the request it answers."""

    def __init__(self, state: ServerState, job: Job, request: Request, holds_slot: bool = True):
        self.state, self.job, self.request = state, job, request
        self._closed, self._holds_slot = False, holds_slot

    @classmethod
    def open(cls, state: ServerState, job: Job, request: Request) -> "JobStream":
        """Take a stream slot and submit ``job`` (429 when either is full)."""
        state.open_stream()
        try:
            state.submit(job)
        except BaseException:
            state.streams.release()
            raise
        return cls(state, job, request)

    def close(self, reason: str = "the client disconnected") -> None:
        """Cancel the job unless it ended, and give the slot back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.job.finished:
            self.job.cancel(reason)
        if self._holds_slot:
            self.state.streams.release()

    async def first(self) -> Event:
        """The job's first event; a failure is raised as :class:`ApiError`, a disconnect as ClientGone
        (the job is cancelled and the slot given back in both cases)."""
        waiter = asyncio.ensure_future(self.job.next())
        watcher = asyncio.ensure_future(_disconnect(self.request))
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self.close("the request was cancelled")
            raise
        finally:
            watcher.cancel()
        if not waiter.done():
            waiter.cancel()
            self.close("the client disconnected while the request waited")
            raise ClientGone()
        event = waiter.result()
        if isinstance(event, (Failed, Cancelled)):
            self.close()
            raise failure_error(event)
        return event

    async def events(self, first: Event) -> AsyncIterator[Event]:
        """``first``, then every later event up to and including the last one."""
        event = first
        while True:
            yield event
            if not isinstance(event, Chunk):
                return
            event = await self.job.next()

    async def audio(self, first: Event, encoder: Encoder, stretcher: Stretcher) -> AsyncIterator[bytes]:
        """The file's bytes as frames are made (see the module docstring)."""
        try:
            async for event in self.events(first):
                if isinstance(event, Chunk):
                    data = encoder.write(stretcher.push(event.samples))
                elif isinstance(event, Done):
                    data = encoder.write(stretcher.finish()) + encoder.finish()
                else:
                    log.warning("request %s ended early while streaming: %s", self.job.id, failure_error(event).message)
                    return
                if data:
                    yield data
        finally:
            self.close()

    async def sse(self, first: Event, encoder: Encoder, stretcher: Stretcher, done: Callable[[object], dict],
                  delta_type: str = "speech.audio.delta") -> AsyncIterator[bytes]:
        """Server-sent events: ``delta_type`` events with base64 ``audio`` (chunks of the file's bytes),
        then the event ``done(value)`` returns for the job's value, or an ``error`` event."""

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def delta(data: bytes) -> bytes:
            return event({"type": delta_type, "audio": base64.b64encode(data).decode("ascii")})

        try:
            async for item in self.events(first):
                if isinstance(item, Chunk):
                    data = encoder.write(stretcher.push(item.samples))
                    if data:
                        yield delta(data)
                elif isinstance(item, Done):
                    data = encoder.write(stretcher.finish()) + encoder.finish()
                    if data:
                        yield delta(data)
                    yield event(done(item.value))
                else:
                    error = failure_error(item)
                    log.warning("request %s ended early while streaming: %s", self.job.id, error.message)
                    yield event({"type": "error", **error.body()})
        finally:
            self.close()
