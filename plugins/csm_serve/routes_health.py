"""``GET /health`` (the process answers), ``GET /ready`` (the models are loaded), ``GET /metrics``.

These need no API key: a load balancer and a Prometheus scraper must reach them. ``/health`` never
touches the worker, so it answers while the server is loading or fully busy.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from csm_serve.metrics import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/health", summary="The server process is alive")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="The models are loaded and requests are taken")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.serve
    scheduler = state.scheduler
    body = {
        "ready": scheduler.ready,
        "load_seconds": scheduler.load_seconds,
        "error": scheduler.load_error,
        "queue_depth": scheduler.depth,
        "max_queue": state.options.max_queue,
        "open_streams": state.streams.open,
        "max_streams": state.options.max_streams,
        "max_frames": state.max_frames,
        "sample_rate": state.sample_rate,
        "device": state.device,
    }
    return JSONResponse(body, status_code=200 if scheduler.ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.serve.metrics.render(), media_type=CONTENT_TYPE_LATEST)
