"""Read records (lists of dicts) from JSONL, JSON, CSV, Parquet files or a saved `datasets` folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retune.errors import UsageError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the data format from the suffix '{path.suffix}'; "
            f"use one of {', '.join(SUFFIX_FORMATS)} or set format: jsonl|json|csv|parquet|hf on the source"
        )
    return fmt


def read_records(path: str | Path, fmt: str = "auto", split: str | None = None) -> list[dict[str, Any]]:
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"data file not found: {path} (check the path in data.train / data.validation / data.test)")
    fmt = detect_format(path) if fmt == "auto" else fmt
    reader = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet, "hf": _hf}[fmt]
    if fmt == "hf":
        records = reader(path, split)
    else:
        records = reader(path)
    if not records:
        raise UsageError(f"{path}: the dataset is empty (no records); add examples or point to another file")
    return records


def _jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: malformed JSON line ({e.msg} at column {e.colno}); fix or remove that line") from None
            if not isinstance(obj, dict):
                raise UsageError(f"{path}:{n}: each JSONL line must be an object with named fields, got {type(obj).__name__}")
            out.append(obj)
    return out


def _json(path: Path) -> list[dict]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file") from None
    if isinstance(obj, dict):  # {"data": [...]} or {"train": [...]} as many exports do
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UsageError(f"{path}: expected a list of records (or one key holding a list)")
        obj = lists[0]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise UsageError(f"{path}: expected a JSON list of objects with named fields")
    return obj


def _csv(path: Path) -> list[dict]:
    import pandas as pd

    try:
        df = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot parse CSV ({str(e).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        return []
    return df.to_dict(orient="records")


def _parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UsageError(f"{path}: cannot read Parquet ({e})") from None


def _hf(path: Path, split: str | None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise UsageError(f"{path}: not a saved `datasets` folder ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else next(iter(ds))
        if split not in ds:
            raise UsageError(f"{path}: no split '{split}' (has: {', '.join(ds)})")
        ds = ds[split]
    return ds.to_list()
