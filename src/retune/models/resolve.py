"""Turn `model.base` into something `from_pretrained` can load: a built-in, a local folder, a GGUF file, or a hub id."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from retune.errors import UsageError
from retune.models.builtin import BUILTIN_MODELS, builtin_model_dir
from retune.models.gguf_base import gguf_base_dir, gguf_file


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def resolve_base(name: str, materialise: bool = True) -> str:
    if name in BUILTIN_MODELS:
        return str(builtin_model_dir(name)) if materialise else name
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UsageError(f"model path does not exist: {path} (set model.base to a Hugging Face folder, a hub id or a built-in)")
        if (gguf := gguf_file(path)) is not None:
            return str(gguf_base_dir(gguf)) if materialise else str(path)
        if not (path / "config.json").exists():
            raise UsageError(f"{path} is not a Hugging Face model folder (no config.json) nor a GGUF file")
        try:
            json.loads((path / "config.json").read_text())
        except json.JSONDecodeError:
            raise UsageError(f"{path}/config.json is corrupt (not valid JSON); re-export the model") from None
        return str(path)
    if "/" not in name:  # hub ids are owner/name; a bare word must be a built-in
        hint = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"built-ins: {', '.join(BUILTIN_MODELS)}"
        raise UsageError(f"unknown built-in model '{name}' ({fix}); or give a local folder or a hub id like owner/name")
    return name
