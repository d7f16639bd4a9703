"""Atomic file writes: a reader never sees a half-written file (temp file in the same folder + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retune.errors import UsageError


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_jsonl(path: str | Path, torn_tail: bool = False) -> list[Any]:
    """The rows of a JSONL file, split on "\n" only: str.splitlines() also breaks on U+0085 and U+2028,
    which JSON leaves unescaped inside strings (json.dumps(ensure_ascii=False); a rotten-tomatoes review
    holds U+0085). A bad line is a one-line error naming the file and line; `torn_tail`: a bad last line
    is skipped instead (a file a killed process was appending to, metrics.jsonl)."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if not (torn_tail and n == len(lines)):
                raise UsageError(f"{path} line {n} is not valid JSON ({e.msg}); restore the file or rerun what wrote it") from None
    return rows


def append_jsonl(path: str | Path, obj: dict) -> None:
    # One line per append: a crash loses at most the line being written, never earlier ones.
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=_jsonable) + "\n")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written tmp_dir into place; the old final_dir survives until the new one is complete."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def staging_dir(final_dir: str | Path) -> Path:
    """A fresh empty sibling folder to write into before `replace_dir`."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))


def content_hash(obj: object) -> str:
    """sha256 of a JSON-able value: two runs (or two machines) used the same data exactly when their
    hashes agree. Built-ins read from the machine (debian-descriptions comes from apt's lists) can
    drift; this shows when they did."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
