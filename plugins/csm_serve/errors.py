"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal of the server, validation errors and unknown routes included, is an :class:`ApiError`
rendered by :func:`install_error_handlers`; nothing answers with FastAPI's own ``{"detail": ...}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("csm.serve")

INVALID = "invalid_request_error"


class ApiError(Exception):
    """A refusal: HTTP ``status``, a ``message`` that says what to do, OpenAI's ``type``, the
    ``param`` at fault (or None), a machine-readable ``code`` and extra response ``headers``."""

    def __init__(self, status: int, message: str, *, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _validation_error(exc: RequestValidationError) -> ApiError:
    problems, param = [], None
    for item in exc.errors():
        loc = [str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path", "form")]
        field = ".".join(loc) or "body"
        param = param or field
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            message = "unrecognized request argument"
        elif item.get("type") == "missing":
            message = "is required"
        problems.append(f"{field}: {message}")
    return ApiError(400, "invalid request: " + "; ".join(problems), param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Render :class:`ApiError`, request validation errors, HTTP errors (404, 405) and unexpected
    exceptions (500, logged with the traceback) in OpenAI's error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # FastAPI wraps errors raised while reading the body
            return exc.__cause__.response()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += " (see /docs for the endpoints)"
        return ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error",
                        code="internal_error").response()
