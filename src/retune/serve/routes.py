"""The HTTP routes, one APIRouter per group: health, generation (/v1/chat/completions, /v1/completions), and
models (/v1/models, /v1/adapters). Everything but /health sits behind the API key when one is set."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from retune.serve.engine import Engine
from retune.serve.errors import ApiError
from retune.serve.generation import Generation
from retune.serve.registry import Registry
from retune.serve.schemas import AddAdapter, ChatRequest, CompletionRequest

if TYPE_CHECKING:
    from retune.serve.app import Settings


def api_key_check(settings: Settings) -> Callable[[Request], None]:
    def auth(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error")

    return auth


def health_router(registry: Registry, engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": registry.names(), "queued": engine.queued(), "batches": engine.batches}

    return router


def generation_router(generation: Generation, auth: Callable[[Request], None]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(auth)])

    @router.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:
        return await generation.chat(req)

    @router.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        return await generation.complete(req)

    return router


def models_router(registry: Registry, auth: Callable[[Request], None]) -> APIRouter:
    """The served models, and the adapters (admin): names only; a run is looked up in the --adapter-dir listing."""
    router = APIRouter(dependencies=[Depends(auth)])

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "retune"} for n in registry.names()]}

    @router.get("/v1/adapters")
    async def list_adapters() -> dict:
        return {"data": [{"id": a.name, "run": a.run_dir.name if a.run_dir else None} for a in registry.adapters.values()]}

    @router.post("/v1/adapters", status_code=201)
    async def add_adapter(body: AddAdapter) -> dict:
        served = await run_in_threadpool(registry.add_from_dir, body.name, body.run)
        return {"id": served.name, "object": "model", "run": body.run}

    @router.delete("/v1/adapters/{name}")
    async def remove_adapter(name: str) -> dict:
        await run_in_threadpool(registry.remove, name)
        return {"id": name, "deleted": True}

    return router
