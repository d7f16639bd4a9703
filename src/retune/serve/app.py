"""An OpenAI-compatible HTTP API over the registry and the engine: /v1/chat/completions, /v1/completions,
/v1/models, /health, and /v1/adapters to add or remove adapters without a restart.

The routes live in routes.py (one router per group), the request -> job -> response path in generation.py,
and the error contract in errors.py: every failure is `{"error": {"message", "type", "param", "code"}}`.
No endpoint takes a file path from request data.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI

from retune.serve.engine import Engine
from retune.serve.errors import BodyLimit, install_error_handlers
from retune.serve.generation import Generation
from retune.serve.registry import Registry
from retune.serve.routes import api_key_check, generation_router, health_router, models_router


@dataclass
class Settings:
    api_key: str | None = None
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    default_max_tokens: int = 128
    timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20


def _lifespan(engine: Engine) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not engine.thread.is_alive():
            engine.start()
        yield
        engine.stop()

    return lifespan


def create_app(registry: Registry, engine: Engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="retune", lifespan=_lifespan(engine))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    install_error_handlers(app)
    auth = api_key_check(settings)
    app.include_router(health_router(registry, engine))
    app.include_router(models_router(registry, auth))
    app.include_router(generation_router(Generation(registry, engine, settings), auth))
    return app
