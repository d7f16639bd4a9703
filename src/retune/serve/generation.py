"""Chat and text completions: a request becomes an engine job, and the job's events become an OpenAI response,
either one JSON body or a stream of server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from retune.data.templates import text_ids
from retune.errors import UsageError
from retune.serve.engine import Engine, Job
from retune.serve.errors import ApiError, usage_status
from retune.serve.registry import Registry, Served
from retune.serve.schemas import ChatRequest, CompletionRequest, Message

if TYPE_CHECKING:
    from retune.serve.app import Settings

log = logging.getLogger("retune.serve")


class Generation:
    def __init__(self, registry: Registry, engine: Engine, settings: Settings):
        self.registry, self.engine, self.settings = registry, engine, settings

    async def chat(self, req: ChatRequest) -> Any:
        served = self.registry.get(req.model)
        text, chat = self._chat_prompt(served, req.messages)
        job = self._job(req, served, self._prompt_ids(text, chat))
        return await self._respond(job, req.stream, "chat")

    async def complete(self, req: CompletionRequest) -> Any:
        served = self.registry.get(req.model)
        ids = self._prompt_ids(req.text(), chat=False)
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        job = self._job(req, served, ids)
        return await self._respond(job, req.stream, "text")

    def _prompt_ids(self, text: str, chat: bool) -> list[int]:
        return text_ids(self.registry.tok, text, chat)  # the one rule for special tokens (data/templates.py)

    def _chat_prompt(self, served: Served, messages: list[Message]) -> tuple[str, bool]:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        if getattr(self.registry.tok, "chat_template", None):
            return served.fmt.prompt_text("", messages=msgs), True
        return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:", False  # a tokenizer without a template

    def _job(self, req: ChatRequest | CompletionRequest, served: Served, ids: list[int]) -> Job:
        settings, context = self.settings, self.registry.max_context
        limit = getattr(req, "max_completion_tokens", None) or req.max_tokens or min(settings.default_max_tokens, settings.max_tokens)
        if limit > settings.max_tokens:
            raise ApiError(400, f"max_tokens={limit} is over this server's limit of {settings.max_tokens}", param="max_tokens")
        if len(ids) + limit > context:
            raise ApiError(
                400, f"prompt ({len(ids)} tokens) + max_tokens ({limit}) exceeds the model's context of {context}", param="max_tokens"
            )
        return Job(
            model=served.name,
            prompt_ids=ids,
            max_tokens=limit,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stops(),
            deadline=time.monotonic() + settings.timeout_s,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
        )

    async def _respond(self, job: Job, stream: bool, kind: str) -> Any:
        self.engine.submit(job)  # QueueFull -> 429 before any byte is sent
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if stream:
            return StreamingResponse(_sse(job, rid, kind), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts: list[str] = []
        try:
            finish = await _collect(job, parts)
        finally:
            job.cancel()
        if finish == "timeout":
            raise ApiError(504, f"the request took longer than the server's timeout of {self.settings.timeout_s:g}s", "timeout_error")
        return _completion(job, rid, kind, "".join(parts), finish)


def _completion(job: Job, rid: str, kind: str, text: str, finish: str) -> dict:
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if kind == "chat"
        else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    )
    usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": job.completion_tokens}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": job.model, "choices": [choice], "usage": usage}


async def _next_event(job: Job) -> tuple:
    assert job.events is not None
    try:
        return await asyncio.wait_for(job.events.get(), timeout=max(job.deadline - time.monotonic(), 0) + 1.0)
    except TimeoutError:
        return ("done", "timeout")


async def _collect(job: Job, parts: list[str]) -> str:
    while True:
        event = await _next_event(job)
        if event[0] == "text":
            parts.append(event[1])
        elif event[0] == "done":
            return event[1]
        else:
            _raise_engine_error(event[1])


def _raise_engine_error(exc: BaseException) -> None:
    if isinstance(exc, UsageError):
        raise ApiError(usage_status(exc), str(exc), "invalid_request_error")
    log.error("generation failed: %r", exc)
    raise ApiError(500, f"generation failed: {type(exc).__name__}", "server_error")


async def _sse(job: Job, rid: str, kind: str) -> AsyncIterator[str]:
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
            event = await _next_event(job)
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
