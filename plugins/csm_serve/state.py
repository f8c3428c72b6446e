"""What every route shares: the settings, the serve options, the scheduler, the voices, the metrics and
the conversations, in one :class:`ServerState` kept on ``app.state.serve``.

:meth:`ServerState.submit` is the one way into the scheduler: it refuses with 503 while the models
load, and turns a full queue into 429 with ``Retry-After``. :meth:`ServerState.open_stream` takes one of
the ``max_streams`` open responses/WebSockets (more: 429).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from csm_core.audio import MIMI_SAMPLE_RATE
from csm_core.config import Settings
from csm_serve.errors import ApiError
from csm_serve.metrics import ServeMetrics
from csm_serve.options import ServeOptions
from csm_serve.scheduler import Cancelled, Done, Failed, Job, QueueFull, Scheduler
from csm_serve.voices import VoiceStore


class StreamSlots:
    """A counter of open streams with a ceiling (thread-safe)."""

    def __init__(self, limit: int):
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def acquire(self, retry_after: int) -> None:
        with self._lock:
            if self.open >= self.limit:
                raise ApiError(429, f"{self.limit} streams are open already, the most this server keeps: retry "
                               "later", type="rate_limit_error", code="too_many_streams",
                               headers={"Retry-After": str(retry_after)})
            self.open += 1

    def release(self) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)


@dataclass
class ServerState:
    settings: Settings
    options: ServeOptions
    scheduler: Scheduler
    voices: VoiceStore
    metrics: ServeMetrics
    conversations: "object"  # csm_serve.conversations.ConversationStore (imported there, not here)
    sample_rate: int = MIMI_SAMPLE_RATE  # the tts stage's, set once it is loaded
    device: str | None = None  # the device the tts stage runs on, set once it is loaded
    streams: StreamSlots = field(init=False)

    def __post_init__(self) -> None:
        self.streams = StreamSlots(self.options.max_streams)

    def check_ready(self) -> None:
        if not self.scheduler.ready:
            detail = self.scheduler.load_error or "the models are still loading (see GET /ready)"
            raise ApiError(503, f"not ready: {detail}", type="server_error", code="not_ready",
                           headers={"Retry-After": str(self.options.retry_after_s)})

    def submit(self, job: Job) -> Job:
        """Queue ``job`` on the scheduler (503 while loading, 429 + Retry-After when the queue is full)."""
        self.check_ready()
        try:
            return self.scheduler.submit(job, asyncio.get_running_loop())
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy ({exc}): retry after {self.options.retry_after_s} s",
                           type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(self.options.retry_after_s)}) from None

    def open_stream(self) -> None:
        """Take one of the ``max_streams`` slots (429 when none is free); give it back with
        ``streams.release()``."""
        self.streams.acquire(self.options.retry_after_s)

    async def run(self, job: Job, request, on_chunk=None) -> object:
        """Submit ``job`` and wait for its value (no stream slot: the answer is one body); audio chunks
        go to ``on_chunk(samples)``. A failure is raised as ApiError; a client that leaves cancels the job."""
        from csm_serve.streaming import JobStream, failure_error  # streaming imports this module

        self.submit(job)
        stream = JobStream(self, job, request, holds_slot=False)
        event = await stream.first()
        while not isinstance(event, (Done, Failed, Cancelled)):
            if on_chunk is not None:
                on_chunk(event.samples)
            event = await job.next()
        if isinstance(event, Done):
            return event.value
        raise failure_error(event)

    @property
    def max_frames(self) -> int:
        return self.settings.generation.frame_limit()
