"""One base model in memory, several named adapters on top of it (peft multi-adapter), added and removed live.

Requests name what they want in the OpenAI `model` field: the base's name, or an adapter's name.
Adding an adapter at run time never takes a path from a request: the request gives a run's folder
*name*, which must be one of the entries listed in the `--adapter-dir` folder chosen at start-up.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retune.config import RetuneConfig
from retune.data.templates import Formatter
from retune.errors import UsageError
from retune.rundir import RunDir

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # peft module keys cannot hold dots


class NotFound(UsageError):
    """An unknown model or adapter name (HTTP 404)."""


class Conflict(UsageError):
    """The name is taken, or the adapter does not fit this base (HTTP 409)."""


@dataclass
class Served:
    name: str
    fmt: Formatter  # the prompt rendering the run was trained with (chat template or plain)
    run_dir: Path | None  # None for the base


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UsageError(f"adapter name '{name}': use 1-64 letters, digits, '-' or '_' (it becomes the OpenAI model id)")
    return name


class Registry:
    """The base model plus named adapters. `lock` serialises generation against add/remove."""

    def __init__(self, base: str, base_cfg: RetuneConfig | None = None, adapter_dir: str | Path | None = None):
        from retune.models.load import load_base, load_tokenizer
        from retune.models.resolve import resolve_base

        cfg = base_cfg or RetuneConfig.model_validate({"model": {"base": base}})
        # serve on an unquantised base: QLoRA adapters run on the bf16/fp32 weights (see docs/deploy.md)
        cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"quantization": "none"})})
        self.base_cfg = cfg
        self.base_path = resolve_base(cfg.model.base)
        self.base_name = Path(base).name if Path(base).is_dir() else base
        self.model: Any = load_base(cfg, self.base_path)
        self.model.eval()
        self.tok = load_tokenizer(self.base_path, cfg.model)
        self.adapter_dir = Path(adapter_dir).resolve() if adapter_dir else None
        self.adapters: dict[str, Served] = {}
        self.base = Served(self.base_name, Formatter(self.tok, cfg.data), None)
        self.lock = threading.RLock()

    # -- lookup
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    def get(self, name: str) -> Served:
        if name == self.base_name:
            return self.base
        if name in self.adapters:
            return self.adapters[name]
        raise NotFound(f"model '{name}' does not exist; available: {', '.join(self.names())}")

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    # -- add / remove
    def add(self, name: str, run_dir: str | Path) -> Served:
        """Load RUN/adapter under `name` (start-up: any run directory the operator names)."""
        import peft
        from safetensors import SafetensorError

        from retune.models.resolve import resolve_base

        check_name(name)
        run_dir = Path(run_dir)
        if name == self.base_name or name in self.adapters:
            raise Conflict(f"model name '{name}' is already in use")
        run = RunDir.open(run_dir)
        if not (run_dir / "adapter").exists():
            raise UsageError(f"{run_dir} has no adapter/ (a full fine-tune? serve its model/ folder as --base, or merge it)")
        cfg = run.config()
        if resolve_base(cfg.model.base, materialise=False) != resolve_base(self.base_cfg.model.base, materialise=False):
            raise Conflict(f"{run_dir.name} was trained on base '{cfg.model.base}', but this server's base is '{self.base_cfg.model.base}'")
        with self.lock:
            try:
                if isinstance(self.model, peft.PeftModel):
                    self.model.load_adapter(run_dir / "adapter", adapter_name=name)
                else:
                    self.model = peft.PeftModel.from_pretrained(self.model, run_dir / "adapter", adapter_name=name)
            except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
                raise Conflict(f"cannot load {run_dir.name}/adapter: {str(e).splitlines()[0]}") from None
            if getattr(self.model.peft_config[name], "is_prompt_learning", False):
                self.model.delete_adapter(name)
                raise Conflict(f"{run_dir.name}: prompt-learning adapters ({cfg.adapter.type}) cannot share a base; merge or serve alone")
            self.model.eval()
            served = Served(name, Formatter(self.tok, cfg.data), run_dir)
            self.adapters[name] = served
        return served

    def add_from_dir(self, name: str, run_name: str) -> Served:
        """Live add: `run_name` is matched against the listing of --adapter-dir, never joined into a path."""
        if self.adapter_dir is None:
            raise UsageError("adding adapters at run time is off; start the server with --adapter-dir DIR")
        entries = {p.name: p for p in self.adapter_dir.iterdir() if p.is_dir() and not p.is_symlink()}
        if run_name not in entries:
            raise NotFound(f"no run named '{run_name}' in the server's adapter directory")
        return self.add(name, entries[run_name])

    def remove(self, name: str) -> None:
        if name == self.base_name:
            raise Conflict("the base model cannot be removed")
        if name not in self.adapters:
            raise NotFound(f"adapter '{name}' does not exist; loaded: {', '.join(self.adapters) or 'none'}")
        with self.lock:
            self.model.delete_adapter(name)
            del self.adapters[name]

    def close(self) -> None:
        """Free what the garbage collector does not (nothing for torch models; llama.cpp's, see serve/gguf.py)."""

    # -- generation context
    def activate(self, name: str) -> Any:
        """A context manager in which self.model computes as `name` (call with self.lock held)."""
        import contextlib

        if name == self.base_name:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        self.model.set_adapter(name)
        return contextlib.nullcontext()
