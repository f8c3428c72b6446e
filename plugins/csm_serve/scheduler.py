"""The scheduler: every request that touches a model runs here, one at a time, on one worker thread.

The async request handlers never call the pipeline. They :meth:`Scheduler.submit` a :class:`Job` to a
bounded queue (full: :class:`QueueFull`, which the handlers answer with 429 and ``Retry-After``) and
read its events as they come: audio chunks, then exactly one of done / failed / cancelled.

- The worker thread builds the pipeline (``load``) before it takes the first job; :attr:`ready` says
  whether it did, :attr:`load_error` why not.
- :meth:`Job.cancel` (a client that went away, a ``cancel`` message, shutdown) is seen by the worker
  before the job starts, and between two frames while it runs (:meth:`JobControl.emit` raises
  :class:`JobCancelled`), so generation stops within one 80 ms frame.
- A job that raises fails alone: :class:`~csm_core.errors.CsmError` (a request that cannot be done) and
  any other exception (logged with its traceback) become that job's failed event, and the worker takes
  the next job.
- :meth:`stop_accepting` refuses new jobs; :meth:`cancel_all` cancels the queued and running ones;
  :meth:`close` does both and joins the worker.

Continuous batching (``max_rows`` > 1): after loading, the worker opens the tts stage's batch session
(``CsmSpeaker.open_session``). A speech job's ``work`` then only prepares its request: ``synthesize``
hands it to the scheduler (:data:`csm_serve.synthesis.ROW_ADMISSION`), which prefills it into a free row;
every loop of the worker steps all active rows by one frame and emits each row's decoded audio. Jobs wait
in the queue while every row is taken; a cancelled or failed row leaves at the next frame boundary and its
row takes the next waiting job. Jobs of other kinds (voice cloning, conversation turns) run alone, once the
active rows have ended. A backend that serves one request at a time is reported once at start-up and runs
one row. The handlers' side (submit, events, cancel) is the same either way.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from csm_core.errors import CsmError
from csm_serve.synthesis import ROW_ADMISSION

log = logging.getLogger("csm.serve.scheduler")


class QueueFull(Exception):
    """The scheduler's queue holds ``max_queue`` jobs already (or it is shutting down)."""


class JobCancelled(Exception):
    """Raised inside a running job when it was cancelled; the worker turns it into a cancelled event."""


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray


@dataclass(frozen=True)
class Done:
    value: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException
    client_error: bool  # a CsmError: the request could not be done (400), else the server failed (500)


@dataclass(frozen=True)
class Cancelled:
    reason: str


Event = Chunk | Done | Failed | Cancelled
_ids = itertools.count(1)
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("csm_serve_request_id", default=None)
"""Set by a Ray replica's middleware (csm_serve.ray_headers) to the proxy's request id: a job made while
it is set takes that id instead of a ``req_<n>`` of its own."""


def _new_id() -> str:
    return REQUEST_ID.get() or f"req_{next(_ids)}"


@dataclass
class JobControl:
    """What a running job's ``work`` gets besides the pipeline: ``emit`` audio, ``check`` for cancel."""

    job: "Job"

    def check(self) -> None:
        """Raise :class:`JobCancelled` when the job was cancelled."""
        if self.job.cancelled.is_set():
            raise JobCancelled(self.job.cancel_reason or "cancelled")

    def emit(self, samples: np.ndarray) -> None:
        """Hand one chunk to the handler (after checking for cancel: the point between two frames)."""
        self.check()
        if self.job.first_audio_at is None:
            self.job.first_audio_at = time.perf_counter()
        self.job.post(Chunk(np.asarray(samples, dtype=np.float32)))


@dataclass
class Job:
    """One request's work: ``work(pipeline, control) -> value`` runs on the worker thread. ``kind``
    names the endpoint (logs, metrics); ``result`` may be set by ``work`` to a
    :class:`~csm_serve.synthesis.SpeechResult` for the metrics."""

    kind: str
    work: Callable[[Any, JobControl], Any]
    id: str = field(default_factory=_new_id)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_audio_at: float | None = None
    outcome: str = "queued"  # queued, running, done, failed, cancelled
    cancel_reason: str | None = None
    result: Any = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _events: asyncio.Queue | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._events = loop, asyncio.Queue()

    def post(self, event: Event) -> None:
        """Thread-safe: queue ``event`` for the handler (dropped if the event loop has stopped)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def cancel(self, reason: str) -> None:
        """Ask the job to stop (thread-safe, idempotent); the first reason is kept."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    async def next(self) -> Event:
        """The next event (waits for it)."""
        return await self._events.get()

    @property
    def time_to_first_audio(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.submitted_at

    @property
    def finished(self) -> bool:
        return self.outcome in ("done", "failed", "cancelled")


class Scheduler:
    """One worker thread, a queue of at most ``max_queue`` waiting jobs, the pipeline ``load`` builds.

    ``on_finish(job)`` is called on the worker thread after each job ends (metrics, logs);
    ``on_depth(n)`` whenever the number of waiting jobs changes; ``on_batch(n)`` whenever the number of
    active rows changes. ``max_rows``: speech requests generated together at most (1: one at a time).
    """

    def __init__(self, load: Callable[[], Any], max_queue: int,
                 on_finish: Callable[[Job], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 max_rows: int = 1,
                 on_batch: Callable[[int], None] | None = None):
        self._load = load
        self.max_rows = max_rows
        self._on_batch = on_batch or (lambda n: None)
        self._session = None  # the tts stage's SpeechSession when batching
        self._rows: dict[int, tuple[Job, Any, Any]] = {}  # slot -> (job, its value, its SpeechRow)
        self._held: Job | None = None  # a job that must run alone, waiting for the rows to end
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._on_finish = on_finish or (lambda job: None)
        self._on_depth = on_depth or (lambda n: None)
        self._thread = threading.Thread(target=self._run, name="csm-serve-worker", daemon=True)
        self._closing = threading.Event()
        self._running: Job | None = None
        self._lock = threading.Lock()
        self.loaded = threading.Event()  # set when loading ended, well or not
        self.pipeline = None
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.pipeline is not None and not self._closing.is_set()

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    @property
    def batch_size(self) -> int:
        """Requests generating together now (active rows of the batch session; 0 or 1 without batching)."""
        return len(self._rows) if self._session is not None else int(self._running is not None)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue ``job`` (its events go to ``loop``); :class:`QueueFull` when the queue is full or the
        scheduler is closing."""
        if self._closing.is_set():
            raise QueueFull("the server is shutting down")
        job.bind(loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are waiting already") from None
        self._on_depth(self.depth)
        return job

    def stop_accepting(self) -> None:
        """Refuse new jobs from now on (:class:`QueueFull`); the queued and running ones go on."""
        self._closing.set()

    def cancel_all(self, reason: str) -> None:
        """Cancel the waiting jobs and the running one (it stops within a frame); the worker stays."""
        self._cancel_waiting(reason)
        with self._lock:
            if self._running is not None:
                self._running.cancel(reason)
            for job, _, _ in self._rows.values():
                job.cancel(reason)
            if self._held is not None:
                self._held.cancel(reason)

    def close(self, timeout: float = 30.0) -> None:
        """Take no more jobs, cancel the waiting and the running one, join the worker, close the pipeline."""
        self._closing.set()
        self.cancel_all("the server is shutting down")
        try:
            self._queue.put_nowait(None)  # wake the worker
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._cancel_waiting()  # a job that slipped in while closing
        self._on_depth(0)
        if self.pipeline is not None:
            self.pipeline.close()

    def _cancel_waiting(self, reason: str = "the server is shutting down") -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.cancel(reason)
                self._finish(job, Cancelled(reason), "cancelled")

    # -- the worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.pipeline = self._load()
            self.load_seconds = time.perf_counter() - started
            log.info("models loaded in %.2f s", self.load_seconds)
        except BaseException as exc:  # noqa: BLE001 - reported by /ready and the command's exit
            self.load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CsmError) else str(exc)
            log.error("loading the models failed: %s", self.load_error)
            return
        finally:
            self.loaded.set()
        if self.max_rows > 1:
            self._open_session()
        if self._session is None:
            while not self._closing.is_set():
                job = self._queue.get()
                self._on_depth(self.depth)
                if job is None:
                    continue
                self._execute(job)
            return
        try:
            while not self._closing.is_set():
                self._drop_cancelled()
                self._admit()  # a freed row takes a waiting job before the next frame
                if self._rows:
                    self._step()
        finally:
            self._end_rows(Cancelled("the server is shutting down"), "cancelled")
            close = getattr(self._session, "close", None)
            if close is not None:
                close()

    def _open_session(self) -> None:
        stage = self.pipeline.stage("tts")
        opener = getattr(stage, "open_session", None)
        if opener is None:
            log.warning("serving one request at a time: the tts stage %s has no batch session",
                        type(stage).__name__)
            return
        try:
            self._session = opener(self.max_rows)
        except CsmError as exc:
            log.warning("serving one request at a time (max_rows %d asked): %s", self.max_rows, exc)
            return
        log.info("continuous batching: up to %d requests generate together", self.max_rows)

    # -- continuous batching ----------------------------------------------------------------------
    ROW_KINDS = frozenset({"speech", "generate", "websocket"})

    def _admit(self) -> None:
        """Take waiting jobs while rows are free (waiting for one only when no row is active)."""
        while not self._closing.is_set():
            if self._held is not None:
                if self._rows:
                    return  # it runs alone: let the rows end first
                job, self._held = self._held, None
                self._on_depth(self.depth)
                self._execute(job)
                continue
            if not self._session.free:
                return
            try:
                job = self._queue.get(block=not self._rows)
            except queue.Empty:
                return
            self._on_depth(self.depth)
            if job is None:
                continue
            if job.kind not in self.ROW_KINDS and self._rows:
                self._held = job
                self._on_depth(self.depth)
                return
            self._execute(job, batching=True)

    def _drop_cancelled(self) -> None:
        for slot, (job, _, _row) in list(self._rows.items()):
            if job.cancelled.is_set():
                self._end_row(slot, Cancelled(job.cancel_reason or "cancelled"), "cancelled")

    def _step(self) -> None:
        try:
            chunks = self._session.step()
        except Exception as exc:  # noqa: BLE001 - the rows fail, the worker goes on
            log.exception("a batch step failed")
            self._end_rows(Failed(exc, isinstance(exc, CsmError)), "failed")
            return
        for slot, chunk in chunks.items():
            job, value, row = self._rows[slot]
            if chunk is None:
                self._end_row(slot, Done(value), "done")
                continue
            try:
                row.chunk(chunk)
            except JobCancelled as exc:
                self._end_row(slot, Cancelled(str(exc)), "cancelled")
            except Exception as exc:  # noqa: BLE001 - a failing request fails alone
                log.exception("request %s (%s) failed", job.id, job.kind)
                self._end_row(slot, Failed(exc, isinstance(exc, CsmError)), "failed")

    def _end_row(self, slot: int, event: Event, outcome: str) -> None:
        with self._lock:
            job, _, row = self._rows.pop(slot)
        self._session.remove(slot)
        row.close()
        self._on_batch(len(self._rows))
        self._finish(job, event, outcome)

    def _end_rows(self, event: Event, outcome: str) -> None:
        for slot in list(self._rows):
            self._end_row(slot, event, outcome)

    def _execute(self, job: Job, batching: bool = False) -> None:
        if job.cancelled.is_set():
            self._finish(job, Cancelled(job.cancel_reason or "cancelled"), "cancelled")
            return
        with self._lock:
            self._running = job
        job.outcome = "running"
        admitted: list[tuple[int, Any]] = []

        def admit(row) -> None:  # synthesize's request: prefill it into a free row
            admitted.append((self._session.add(row.request), row))

        token = ROW_ADMISSION.set(admit) if batching else None
        try:
            value = job.work(self.pipeline, JobControl(job))
            if admitted:
                slot, row = admitted[0]
                with self._lock:
                    self._rows[slot] = (job, value, row)
                self._on_batch(len(self._rows))
                return
        except JobCancelled as exc:
            event, outcome = Cancelled(str(exc)), "cancelled"
        except CsmError as exc:
            event, outcome = Failed(exc, True), "failed"
        except Exception as exc:  # noqa: BLE001 - a failing request fails alone
            log.exception("request %s (%s) failed", job.id, job.kind)
            event, outcome = Failed(exc, False), "failed"
        else:
            event, outcome = Done(value), "done"
        finally:
            if token is not None:
                ROW_ADMISSION.reset(token)
            if admitted and admitted[0][0] not in self._rows:  # work raised after its request was admitted
                self._session.remove(admitted[0][0])
            with self._lock:
                self._running = None
        self._finish(job, event, outcome)

    def _finish(self, job: Job, event: Event, outcome: str) -> None:
        """Record the job (metrics, logs), then deliver its last event: a client that reads ``/metrics``
        after its response has ended sees its request counted."""
        job.outcome = outcome
        try:
            self._on_finish(job)
        except Exception:  # noqa: BLE001 - metrics must never take the worker down
            log.exception("recording request %s failed", job.id)
        job.post(event)
