"""The request-body limit, enforced before a handler reads anything.

:class:`BodyLimit` is a pure ASGI middleware: a request whose ``Content-Length`` is over its limit is
answered 413 at once; a chunked body is counted as it arrives and cut off with 413 at the first byte
over. Multipart uploads (cloned voices, conversation audio) get ``max_upload_bytes``; every other body
``max_body_bytes``.
"""

from __future__ import annotations

import json

from csm_serve.errors import ApiError

UPLOAD_PATHS = ("/v1/audio/voices", "/v1/conversation/turn")


class _TooLarge(ApiError):
    """Raised from ``receive`` at the first byte over the limit: an ApiError, so the app renders it."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes, this endpoint's limit",
                         code="request_too_large")


class BodyLimit:
    """Refuse bodies over ``max_body`` bytes (``max_upload`` for :data:`UPLOAD_PATHS`) with 413."""

    def __init__(self, app, max_body: int, max_upload: int):
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    def limit_for(self, path: str) -> int:
        return self.max_upload if path in UPLOAD_PATHS else self.max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_error(send, ApiError(400, "Content-Length is not a number", code="bad_header"))
            if declared > limit:
                return await _send_error(send, _too_large(limit, declared))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge as exc:  # raised where no handler rendered it
            if not started:
                await _send_error(send, exc)


def _too_large(limit: int, declared: int) -> ApiError:
    return ApiError(413, f"the request body is {declared} bytes; this endpoint takes at most {limit} bytes",
                    code="request_too_large")


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
