"""The FastAPI application: routes, error rendering, the body limit and request metrics, and the
lifespan that starts the scheduler (which loads the models) and closes it on shutdown.

OpenAPI docs are served at ``/docs`` (and the schema at ``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from csm_serve.errors import install_error_handlers
from csm_serve.limits import BodyLimit
from csm_serve.metrics import RequestMetrics
from csm_serve.state import ServerState
from csm_serve.streaming import ClientGone

log = logging.getLogger("csm.serve")


def create_app(state: ServerState, replica: str | None = None, wait_for_models: bool = False) -> FastAPI:
    """The app serving ``state``; its lifespan starts ``state.scheduler`` and closes it at shutdown.

    For a Ray Serve replica (:mod:`csm_serve.ray_app`): ``replica`` names it in an ``X-CSM-Replica``
    header of every response; ``wait_for_models`` makes the lifespan's start-up wait until the models
    are loaded (and fail if they did not load), so Ray routes to the replica only once it is ready."""
    from csm_serve import routes_conversation, routes_generate, routes_health, routes_speech, routes_voices, routes_ws

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.scheduler.start()
        if wait_for_models:
            await asyncio.to_thread(state.scheduler.loaded.wait)
            if state.scheduler.load_error is not None:
                state.scheduler.close()
                raise RuntimeError(f"loading the models failed: {state.scheduler.load_error}")
        try:
            yield
        finally:
            log.info("shutting down: cancelling what is still queued or running")
            state.scheduler.close()

    app = FastAPI(
        title="csm-multi speech server",
        description="OpenAI-compatible text to speech with Sesame's CSM (see docs/serve.md).",
        version="1",
        lifespan=lifespan,
    )
    app.state.serve = state
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def _gone(request, exc):  # nobody reads this answer; the metrics count it
        return Response(status_code=499)

    for module in (routes_health, routes_speech, routes_voices, routes_generate, routes_conversation, routes_ws):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_body=state.options.max_body_bytes, max_upload=state.options.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # added last: outermost, sees every answer
    if replica is not None:
        from csm_serve.ray_headers import ReplicaHeaders

        app.add_middleware(ReplicaHeaders, replica=replica)
    return app
