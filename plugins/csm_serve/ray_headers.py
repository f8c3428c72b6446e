"""ASGI middleware for the server on Ray Serve; no Ray import here.

In each replica's app (``create_app(state, replica=...)``), :class:`ReplicaHeaders`:

- ``X-CSM-Replica: <deployment>#<replica id>`` on every HTTP response and WebSocket handshake, so a
  client (and the tests) can tell which replica served it;
- one ``X-Request-Id``: Ray's proxy adds its own request id to every response, so the app's id (the
  job id, also in the replica's log lines) is made that same id (:data:`csm_serve.scheduler.REQUEST_ID`),
  and the app's copy of the header is dropped: the client sees one id, the one the replica logged.
  A proxy id that is not a plain token (letters, digits, ``-_.:``, at most 64) is not used: the job
  keeps its own id and the client then sees both.

In Ray's HTTP proxy, :class:`ProxyErrors` turns a request whose replica died before answering into a
clear 503, and Ray's own plain-text refusals (429 backpressure, 503, 408) into OpenAI-shaped errors.
"""

from __future__ import annotations

import re

from csm_serve.scheduler import REQUEST_ID

REPLICA_HEADER = b"x-csm-replica"
REQUEST_ID_HEADER = b"x-request-id"
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class ReplicaHeaders:
    """Adds ``X-CSM-Replica``; makes the proxy's request id the job's (see the module docstring)."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER, replica.encode("latin-1", "replace"))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        proxy_id = None
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or ()).get(REQUEST_ID_HEADER)
            value = raw.decode("latin-1") if raw else ""
            proxy_id = value if _TOKEN.fullmatch(value) else None

        async def tagged_send(message):
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = list(message.get("headers") or ())
                if proxy_id is not None:  # the proxy adds the same id again
                    headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, self.header]}
            await send(message)

        token = REQUEST_ID.set(proxy_id) if proxy_id is not None else None
        try:
            await self.app(scope, receive, tagged_send)
        finally:
            if token is not None:
                REQUEST_ID.reset(token)


class ProxyErrors:
    """Middleware of Ray's HTTP proxy (not of a replica): the proxy's own answers in OpenAI's error shape,
    as the app's are.

    - A request whose replica failed before it answered (the replica's actor died, was killed, or is
      being replaced) ends in the proxy without a response, which uvicorn would answer with a bare
      ``500 Internal Server Error``: it gets a 503, ``Retry-After`` and an error saying what happened
      and that a retry may succeed (Ray routes the retry to a live replica). A response that had
      started (a stream cut short by the replica's death) ends as it does without this: the
      connection closes before the body is complete.
    - Ray's plain-text refusals (429 when ``max_queued_requests`` are waiting, with the configured
      ``Retry-After``; 503 when the deployment is unavailable; 408 on Ray's request timeout) keep their
      status and headers, with the text as an OpenAI-shaped error (``rate_limit_error``/``queue_full``
      for the 429, as the single server's).

    Installed by :func:`proxy_middlewares` through Ray's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
    (set by ``csmctl serve --ray`` for the local Ray it starts; on a cluster, set it on every node).
    """

    CODES = {408: ("server_error", "timeout"), 429: ("rate_limit_error", "queue_full"),
             503: ("server_error", "unavailable")}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        held: dict | None = None  # a plain-text refusal of the proxy, rewritten once its body is complete
        body = b""

        async def rewriting_send(message):
            nonlocal started, held, body
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
                if message["status"] in self.CODES and content_type.startswith(b"text/plain"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body += message.get("body", b"")
                if message.get("more_body", False):
                    return
                kind, code = self.CODES[held["status"]]
                text = body.decode("utf-8", "replace").strip() or "the request was refused"
                headers = [(k, v) for k, v in held.get("headers") or () if k.lower() not in
                           (b"content-type", b"content-length")]
                await _send_error(send, held["status"], text, kind, code, headers)
                return
            await send(message)

        try:
            await self.app(scope, receive, rewriting_send)
        except Exception:  # noqa: BLE001 - answered below; Ray's proxy logs its own failures
            pass
        if not started:
            await _send_error(send, 503, REPLICA_FAILED, "server_error", "replica_unavailable",
                              [(b"retry-after", b"1")])


REPLICA_FAILED = ("the replica that held this request stopped before it answered (it failed, or Ray is "
                  "replacing it): retry the request")


async def _send_error(send, status: int, message: str, kind: str, code: str, headers: list) -> None:
    import json

    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "csm_serve.ray_headers:proxy_middlewares"


def proxy_middlewares() -> list:
    """The middlewares of Ray's HTTP proxy (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names this)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrors)]
