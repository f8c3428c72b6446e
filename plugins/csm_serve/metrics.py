"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own per app.

- ``csm_serve_requests_total{endpoint, status}``: HTTP requests answered, by route template and status
  (counted when the response starts; WebSocket sessions count as status 101);
- ``csm_serve_active_requests``: HTTP requests and WebSockets in progress;
- ``csm_serve_queue_depth``: jobs waiting for the worker;
- ``csm_serve_jobs_total{kind, outcome}``: jobs ended, as done, failed or cancelled;
- ``csm_serve_frames_generated_total{kind}``: 80 ms frames generated;
- ``csm_serve_time_to_first_audio_seconds{kind}``: from submitting a job to its first chunk (queue
  wait included: what a client waits);
- ``csm_serve_real_time_factor{kind}``: generation seconds / audio seconds of each finished utterance;
- ``csm_serve_frames_per_second{kind}``: frames / generation seconds of each utterance.

:class:`RequestMetrics` is the pure ASGI middleware that counts requests.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the /metrics route

log = logging.getLogger("csm.serve")

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_RTF = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 50.0)
_FPS = (1, 2, 5, 10, 12.5, 20, 50, 100, 200, 500)


class ServeMetrics:
    """The server's metrics and the functions that record them."""

    def __init__(self):
        disable_created_metrics()  # no *_created series beside every counter: they only add noise here
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("csm_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.active = Gauge("csm_serve_active_requests", "HTTP requests and WebSockets in progress", registry=r)
        self.queue_depth = Gauge("csm_serve_queue_depth", "jobs waiting for the worker", registry=r)
        self.batch_size = Gauge("csm_serve_batch_size", "requests generating together (active rows)", registry=r)
        self.jobs = Counter("csm_serve_jobs", "jobs ended", ["kind", "outcome"], registry=r)
        self.frames = Counter("csm_serve_frames_generated", "80 ms frames generated", ["kind"], registry=r)
        self.ttfa = Histogram("csm_serve_time_to_first_audio_seconds", "submit to first audio chunk", ["kind"],
                              buckets=_SECONDS, registry=r)
        self.rtf = Histogram("csm_serve_real_time_factor", "generation seconds / audio seconds", ["kind"],
                             buckets=_RTF, registry=r)
        self.fps = Histogram("csm_serve_frames_per_second", "frames generated per second of generation", ["kind"],
                             buckets=_FPS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def job_finished(self, job, max_frames: int) -> None:
        """Record a job that ended (called on the worker thread) and log one line about it."""
        self.jobs.labels(job.kind, job.outcome).inc()
        result = job.result
        frames = getattr(result, "frames", 0) or 0
        if frames:
            self.frames.labels(job.kind).inc(frames)
        if job.time_to_first_audio is not None:
            self.ttfa.labels(job.kind).observe(job.time_to_first_audio)
        if job.outcome == "done" and result is not None and getattr(result, "real_time_factor", None) is not None:
            self.rtf.labels(job.kind).observe(result.real_time_factor)
            if result.generation_seconds > 0:
                self.fps.labels(job.kind).observe(frames / result.generation_seconds)
        reason = f": {job.cancel_reason}" if job.outcome == "cancelled" and job.cancel_reason else ""
        log.info("request %s (%s) %s after %d of at most %d frames%s", job.id, job.kind, job.outcome,
                 frames, max_frames, reason)


class RequestMetrics:
    """Counts HTTP requests by route template and status, and the requests in progress."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        status = {"code": 101 if scope["type"] == "websocket" else 500}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.active.inc()
        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.active.dec()
            self.metrics.requests.labels(_endpoint(scope), str(status["code"])).inc()


def _endpoint(scope) -> str:
    """The route template that matched (``/v1/audio/voices/{name}``), else ``other``: never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"
