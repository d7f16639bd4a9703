"""`retune serve`: build the registry from the command line and run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from retune.errors import UsageError
from retune.serve.app import Settings, create_app
from retune.serve.engine import Engine
from retune.serve.registry import Registry


def parse_adapters(specs: list[str]) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        name, sep, run = spec.partition("=")
        if not sep or not name or not run:
            raise UsageError(f"--adapter {spec}: use NAME=RUN_DIR, e.g. --adapter sentiment=runs/quickstart-20261127-120000")
        out.append((name, Path(run)))
    return out


def build_registry(base: str | None, adapters: list[str], adapter_dir: str | None = None) -> Registry:
    """The base (given, or the first adapter run's base) loaded once, with every --adapter on it."""
    from retune.rundir import RunDir

    pairs = parse_adapters(adapters)
    runs = [RunDir.open(run, "--adapter") for _, run in pairs]
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise UsageError(f"--adapter-dir {adapter_dir} is not a folder")
    base_cfg = None
    if base is None:
        if not pairs:
            raise UsageError("give --base MODEL, or at least one --adapter NAME=RUN_DIR (its base is then served)")
        base_cfg = runs[0].config()
        base = base_cfg.model.base
    registry = Registry(base, base_cfg, adapter_dir)
    for name, run in pairs:
        registry.add(name, run)
    return registry


def build_gguf_registry(gguf: str, base: str | None, adapters: list[str], adapter_dir: str | None, threads: int) -> Registry:
    """The llama.cpp path: one merged GGUF export, nothing to put on top of it."""
    from retune.serve.gguf import GgufRegistry

    if base is not None or adapters or adapter_dir is not None:
        raise UsageError("--gguf serves one merged model: drop --base/--adapter/--adapter-dir (the export has the adapter merged in)")
    return GgufRegistry(gguf, threads)


def make_engine(registry: Registry, max_batch: int, max_queue: int) -> Engine:
    from retune.serve.gguf import GgufEngine, GgufRegistry

    engine = GgufEngine if isinstance(registry, GgufRegistry) else Engine
    return engine(registry, max_batch=max_batch, max_queue=max_queue)


def serve(
    base: str | None,
    adapters: list[str],
    adapter_dir: str | None,
    host: str,
    port: int,
    settings: Settings,
    max_batch: int,
    max_queue: int,
    gguf: str | None = None,
    threads: int | None = None,
) -> None:
    import os

    import torch
    import uvicorn

    if not _loopback(host) and settings.api_key is None:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    threads = threads or len(os.sched_getaffinity(0))  # the cores this process may use, as training does
    torch.set_num_threads(threads)
    if gguf is not None:
        registry = build_gguf_registry(gguf, base, adapters, adapter_dir, threads)
    else:
        registry = build_registry(base, adapters, adapter_dir)
    app = create_app(registry, make_engine(registry, max_batch, max_queue), settings)
    via = f" (llama.cpp, {threads} threads)" if gguf is not None else ""
    print(f"serving {', '.join(registry.names())}{via} on http://{host}:{port}/v1", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        registry.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
