"""Read records (lists of dicts) from JSONL, JSON, CSV, Parquet files or a saved `datasets` folder."""

from __future__ import annotations

import codecs
import io
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


def read_records(
    path: str | Path, fmt: str = "auto", split: str | None = None, encoding: str = "utf-8", key: str | None = None
) -> list[dict[str, Any]]:
    """`encoding` applies to the text formats (JSONL, JSON, CSV); `key` is the config key that names
    the source (data.train, data.tasks[1].test), for the fix in an error message."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"data file not found: {path} (check the path in {key or 'data.train / data.validation / data.test'})")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hf":
        records = _hf(path, split)
    elif fmt == "parquet":
        records = _parquet(path)
    else:
        text = read_text(path, encoding, key)
        records = {"jsonl": _jsonl, "json": _json, "csv": _csv}[fmt](path, text)
    if not records:
        raise UsageError(f"{path}: the dataset is empty (no records); add examples or point to another file")
    return records


# Signatures of binary files that end up under a text suffix (a renamed or mis-exported file).
_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PAR1": "a Parquet file (give it the .parquet suffix, or set format: parquet on the source)",
    b"\x1f\x8b": "gzip-compressed (decompress it first)",
    b"PK\x03\x04": "a zip archive (an .xlsx workbook? export the sheet as CSV)",
    b"\x7fELF": "a program",
}


def read_text(path: Path, encoding: str = "utf-8", key: str | None = None) -> str:
    """A data file's text; binary data, or bytes that are not `encoding`, are a UsageError naming the
    file, the line and the fix."""
    data = path.read_bytes()
    target = key or "the source"
    kind = next((what for magic, what in _MAGIC.items() if data.startswith(magic)), None)
    if kind is not None:
        raise UsageError(f"{path}: binary data, not text: it is {kind}; point {target} at a JSONL, JSON or CSV file")
    codec = codecs.lookup(encoding).name
    wide = codec.startswith(("utf-16", "utf-32"))
    if not wide and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); {_set_encoding(key, path, 'utf-16')}")
    nul = -1 if wide else data.find(b"\x00")
    if nul >= 0:
        line, col = _position(data, nul, encoding)
        raise UsageError(
            f"{path} line {line}: binary data, not text (a NUL byte at column {col}); point {target} at a JSONL, JSON or CSV file"
        )
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        return data.decode("utf-8-sig" if codec == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        line, col = _position(data, e.start, encoding)
        if codec == "utf-8":
            fix = f"if the file is latin-1, {_set_encoding(key, path, 'latin-1')}"
        else:
            fix = f"set encoding on the source ({target}) to the one the file was saved in, e.g. utf-8 or cp1252"
        label = "UTF-8" if codec == "utf-8" else encoding
        raise UsageError(f"{path} line {line}: not {label} text (byte 0x{data[e.start]:02x} at column {col}); {fix}") from None


def _set_encoding(key: str | None, path: Path, encoding: str) -> str:
    if key is None:  # not from the config (predict --input): the file itself must change
        return f"save it as UTF-8 (e.g. iconv -f {encoding} -t utf-8)"
    return f"set encoding: {encoding} on the source ({key}: {{path: {path}, encoding: {encoding}}})"


def _position(data: bytes, offset: int, encoding: str) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset."""
    start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, len(data[start:offset].decode(encoding, errors="replace")) + 1


def _jsonl(path: Path, text: str) -> list[dict]:
    out = []
    for n, line in enumerate(io.StringIO(text, newline=None), 1):  # lines as open() splits them
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


def _json(path: Path, text: str) -> list[dict]:
    try:
        obj = json.loads(text)
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


def _csv(path: Path, text: str) -> list[dict]:
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(text), keep_default_na=False)
    except pd.errors.ParserError as e:
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
