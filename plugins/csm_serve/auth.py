"""The optional bearer API key.

With ``[options.serve] api_key`` (or ``CSM_SERVE_API_KEY``) set, every ``/v1`` and ``/api`` route,
the WebSocket included, needs ``Authorization: Bearer <key>``; the key is compared with
:func:`hmac.compare_digest` (no timing leak). ``/health``, ``/ready``, ``/metrics`` and the docs stay
open. Without a key every route is open (the default host is the loopback address).
"""

from __future__ import annotations

import hmac

from fastapi import Request, WebSocket

from csm_serve.errors import ApiError


def key_matches(authorization: str | None, api_key: str | None) -> bool:
    """True when no key is configured, or ``authorization`` is ``Bearer <the key>``."""
    if api_key is None:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), api_key.encode("utf-8"))


def unauthorized(authorization: str | None) -> ApiError:
    message = ("no API key given: send Authorization: Bearer <key>" if not authorization
               else "incorrect API key provided")
    return ApiError(401, message, type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


async def require_key(request: Request) -> None:
    """FastAPI dependency: 401 in OpenAI's shape unless the request carries the key."""
    authorization = request.headers.get("authorization")
    if not key_matches(authorization, request.app.state.serve.options.api_key):
        raise unauthorized(authorization)


def websocket_key_ok(websocket: WebSocket) -> bool:
    return key_matches(websocket.headers.get("authorization"), websocket.app.state.serve.options.api_key)
