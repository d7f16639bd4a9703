"""An OpenAI-compatible HTTP API over the registry and the engine: /v1/chat/completions, /v1/completions,
/v1/models, /health, and /v1/adapters to add or remove adapters without a restart.

Every failure is a JSON body `{"error": {"message", "type", "param", "code"}}` with a 4xx status for bad
requests (400 invalid, 401 key, 404 unknown model, 409 conflict, 413 too large, 429 queue full); 504 when
a request outlives its timeout. No endpoint takes a file path from request data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from retune.errors import UsageError
from retune.serve.engine import Engine, Job, QueueFull
from retune.serve.registry import Conflict, NotFound, Registry, Served
from retune.serve.schemas import AddAdapter, ChatRequest, CompletionRequest, Message

log = logging.getLogger("retune.serve")


@dataclass
class Settings:
    api_key: str | None = None
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    default_max_tokens: int = 128
    timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status_code=status)


def _usage_status(e: UsageError) -> int:
    return 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 400


class _BodyLimit:
    """Pure ASGI middleware: refuse a declared body over the limit before it is read (413)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.limit:
                await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(registry: Registry, engine: Engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not engine.thread.is_alive():
            engine.start()
        yield
        engine.stop()

    app = FastAPI(title="retune", lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)

    # -- errors: always the OpenAI error shape, never a traceback
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        if err.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        return _error(400, f"{'.'.join(loc) or 'body'}: {err['msg']}", param=".".join(loc) or None)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        return _error(_usage_status(exc), str(exc), "not_found_error" if isinstance(exc, NotFound) else "invalid_request_error")

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, str(exc), "rate_limit_error")

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    def auth(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error")

    # -- read-only
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": registry.names(), "queued": engine.queued(), "batches": engine.batches}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "retune"} for n in registry.names()]}

    # -- generation
    def prompt_ids(text: str, chat: bool) -> list[int]:
        return registry.tok(text, add_special_tokens=not chat).input_ids  # chat templates carry their own markers

    def make_job(req: Any, served: Served, ids: list[int]) -> Job:
        limit = getattr(req, "max_completion_tokens", None) or req.max_tokens or min(settings.default_max_tokens, settings.max_tokens)
        if limit > settings.max_tokens:
            raise ApiError(400, f"max_tokens={limit} is over this server's limit of {settings.max_tokens}", param="max_tokens")
        if len(ids) + limit > registry.max_context:
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({limit}) exceeds the model's context of {registry.max_context}",
                param="max_tokens",
            )
        loop = asyncio.get_running_loop()
        return Job(
            model=served.name,
            prompt_ids=ids,
            max_tokens=limit,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stops(),
            deadline=time.monotonic() + settings.timeout_s,
            loop=loop,
            events=asyncio.Queue(),
        )

    def chat_prompt(served: Served, messages: list[Message]) -> tuple[str, bool]:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        if getattr(registry.tok, "chat_template", None):
            return served.fmt.prompt_text("", messages=msgs), True
        return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:", False  # a tokenizer without a template

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatRequest) -> Any:
        served = registry.get(req.model)
        text, chat = chat_prompt(served, req.messages)
        job = make_job(req, served, prompt_ids(text, chat))
        return await respond(job, req.stream, "chat")

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest) -> Any:
        served = registry.get(req.model)
        ids = prompt_ids(req.text(), chat=False)
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        job = make_job(req, served, ids)
        return await respond(job, req.stream, "text")

    async def respond(job: Job, stream: bool, kind: str) -> Any:
        engine.submit(job)  # QueueFull -> 429 before any byte is sent
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if stream:
            return StreamingResponse(sse(job, rid, kind), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts: list[str] = []
        try:
            finish = await collect(job, parts)
        finally:
            job.cancel()
        if finish == "timeout":
            raise ApiError(504, f"the request took longer than the server's timeout of {settings.timeout_s:g}s", "timeout_error")
        text = "".join(parts)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            if kind == "chat"
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        )
        usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": job.completion_tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return {"id": rid, "object": obj, "created": int(time.time()), "model": job.model, "choices": [choice], "usage": usage}

    async def next_event(job: Job) -> tuple:
        assert job.events is not None
        try:
            return await asyncio.wait_for(job.events.get(), timeout=max(job.deadline - time.monotonic(), 0) + 1.0)
        except TimeoutError:
            return ("done", "timeout")

    async def collect(job: Job, parts: list[str]) -> str:
        while True:
            event = await next_event(job)
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return event[1]
            else:
                raise_engine_error(event[1])

    def raise_engine_error(exc: BaseException) -> None:
        if isinstance(exc, UsageError):
            raise ApiError(_usage_status(exc), str(exc), "invalid_request_error")
        log.error("generation failed: %r", exc)
        raise ApiError(500, f"generation failed: {type(exc).__name__}", "server_error")

    async def sse(job: Job, rid: str, kind: str) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: str | None, finish: str | None = None, first: bool = False) -> str:
            if kind == "chat":
                d: dict = ({"role": "assistant"} if first else {}) | ({"content": delta} if delta is not None else {})
                choice: dict = {"index": 0, "delta": d, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice, obj = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}, "text_completion"
            return f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': job.model, 'choices': [choice]})}\n\n"

        try:
            if kind == "chat":
                yield chunk("", first=True)
            while True:
                event = await next_event(job)
                if event[0] == "text":
                    yield chunk(event[1])
                    continue
                if event[0] == "error" or event[1] == "timeout":
                    # the status line is already sent: report the error in the stream, as OpenAI does
                    msg = "the request timed out" if event[0] == "done" else f"generation failed: {event[1]}"
                    yield f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
                else:
                    yield chunk(None, event[1])
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancel()  # the client went away or the stream ended: free the row

    # -- adapters (admin): names only; a run is looked up in the --adapter-dir listing
    @app.get("/v1/adapters", dependencies=[Depends(auth)])
    async def list_adapters() -> dict:
        return {"data": [{"id": a.name, "run": a.run_dir.name if a.run_dir else None} for a in registry.adapters.values()]}

    @app.post("/v1/adapters", dependencies=[Depends(auth)], status_code=201)
    async def add_adapter(body: AddAdapter) -> dict:
        served = await run_in_threadpool(registry.add_from_dir, body.name, body.run)
        return {"id": served.name, "object": "model", "run": body.run}

    @app.delete("/v1/adapters/{name}", dependencies=[Depends(auth)])
    async def remove_adapter(name: str) -> dict:
        await run_in_threadpool(registry.remove, name)
        return {"id": name, "deleted": True}

    return app
