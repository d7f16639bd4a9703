"""Assemble a task's train / validation / test records from the config, ready to encode."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from retune.config import DataConfig, EvalConfig, SourceConfig, TemplateConfig
from retune.data.builtin import BUILTIN_DATASETS, is_builtin, load_builtin
from retune.data.readers import read_records
from retune.data.templates import Encoded, Formatter, check_fields
from retune.errors import UsageError


@dataclass
class TaskData:
    name: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    template: TemplateConfig
    labels: list[str] | None
    metric: str  # accuracy | exact_match | rouge_l


def _as_source(src: str | SourceConfig) -> SourceConfig:
    return SourceConfig(path=src) if isinstance(src, str) else src


def read_source(src: str | SourceConfig, default_split: str) -> list[dict]:
    src = _as_source(src)
    if is_builtin(src.path) and not Path(src.path).exists():
        records = load_builtin(src.path, src.split or default_split)
    else:
        records = read_records(src.path, src.format, src.split)
    return records[: src.limit] if src.limit else records


def _rename(records: list[dict], columns: dict[str, str], where: str) -> list[dict]:
    if not columns:
        return records
    missing = [old for old in columns.values() if old not in records[0]]
    if missing:
        raise UsageError(
            f"data.columns maps to '{missing[0]}', which is not a column of {where} (available columns: {', '.join(sorted(records[0]))})"
        )
    return [{**r, **{new: r[old] for new, old in columns.items()}} for r in records]


def load_task(data: DataConfig, ev: EvalConfig) -> TaskData:
    train_src = _as_source(data.train)
    builtin = BUILTIN_DATASETS.get(train_src.path) if not Path(train_src.path).exists() else None
    train = _rename(read_source(train_src, "train"), data.columns, train_src.path)

    if data.validation is not None:
        validation = _rename(read_source(data.validation, "validation"), data.columns, _as_source(data.validation).path)
    elif builtin is not None:
        validation = read_source(SourceConfig(path=train_src.path, split="validation"), "validation")
    else:  # hold out a deterministic slice of the training file
        rows = list(train)
        random.Random(data.shuffle_seed).shuffle(rows)
        n_val = max(1, round(len(rows) * data.validation_split))
        if len(rows) - n_val < 1:
            raise UsageError(f"{train_src.path}: only {len(rows)} records, too few to hold out a validation split; add data.validation")
        validation, train = rows[:n_val], rows[n_val:]

    if data.test is not None:
        test = _rename(read_source(data.test, "test"), data.columns, _as_source(data.test).path)
    elif builtin is not None:
        test = read_source(SourceConfig(path=train_src.path, split="test"), "test")
    else:
        test = validation

    if data.max_train_samples:
        train = train[: data.max_train_samples]
    if data.max_eval_samples:
        validation, test = validation[: data.max_eval_samples], test[: data.max_eval_samples]

    template = data.template or (builtin.template if builtin else None)
    if template is None and not data.messages_column:
        raise UsageError("data.template is required for user data: e.g. template: {prompt: '{question}', response: '{answer}'}")
    template = template or TemplateConfig()
    if not data.messages_column:
        for rows, where in ((train, train_src.path), (validation, "the validation data"), (test, "the test data")):
            check_fields(template, rows, where)

    labels = data.labels or (builtin.labels if builtin else None)
    metric = ev.metric
    if metric == "auto":
        metric = builtin.metric if builtin else ("accuracy" if labels else "rouge_l")
    name = builtin.name if builtin else Path(train_src.path).stem
    return TaskData(name, train, validation, test, template, labels, metric)


def encode_records(fmt: Formatter, template: TemplateConfig, records: list[dict], where: str) -> list[Encoded]:
    return [fmt.encode_record(template, r, f"{where} record {i + 1}") for i, r in enumerate(records)]
