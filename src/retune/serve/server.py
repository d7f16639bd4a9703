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


def serve(
    base: str | None,
    adapters: list[str],
    adapter_dir: str | None,
    host: str,
    port: int,
    settings: Settings,
    max_batch: int,
    max_queue: int,
) -> None:
    import uvicorn

    if not _loopback(host) and settings.api_key is None:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    registry = build_registry(base, adapters, adapter_dir)
    app = create_app(registry, Engine(registry, max_batch=max_batch, max_queue=max_queue), settings)
    print(f"serving {', '.join(registry.names())} on http://{host}:{port}/v1", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
