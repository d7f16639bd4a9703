"""Every failure as the OpenAI error body `{"error": {"message", "type", "param", "code"}}`, never a traceback.

A 4xx status for bad requests (400 invalid, 401 key, 404 unknown model, 409 conflict, 413 too large,
429 queue full); 504 when a request outlives its timeout; 500 for anything else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from retune.errors import UsageError
from retune.serve.engine import QueueFull
from retune.serve.registry import Conflict, NotFound

log = logging.getLogger("retune.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status_code=status)


def usage_status(e: UsageError) -> int:
    return 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 400


class BodyLimit:
    """Pure ASGI middleware: refuse a declared body over the limit before it is read (413)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.limit:
                await error_response(413, f"request body over {self.limit} bytes")(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if err.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON")
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    return error_response(400, f"{'.'.join(loc) or 'body'}: {err['msg']}", param=".".join(loc) or None)


async def _http(_: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error")


async def _api(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.param)


async def _usage(_: Request, exc: UsageError) -> JSONResponse:
    return error_response(usage_status(exc), str(exc), "not_found_error" if isinstance(exc, NotFound) else "invalid_request_error")


async def _full(_: Request, exc: QueueFull) -> JSONResponse:
    return error_response(429, str(exc), "rate_limit_error")


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error")
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


_HANDLERS: dict[type[Exception], Any] = {
    RequestValidationError: _invalid,
    HTTPException: _http,
    ApiError: _api,
    UsageError: _usage,
    QueueFull: _full,
    Exception: _internal,
}


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in _HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
