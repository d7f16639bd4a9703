"""Assemble a task's train / validation / test records from the config, ready to encode."""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from pathlib import Path

from retune.config import DataConfig, EvalConfig, SourceConfig, TaskConfig, TemplateConfig
from retune.data.builtin import BUILTIN_DATASETS, is_builtin, load_builtin
from retune.data.readers import SUFFIX_FORMATS, read_records
from retune.data.templates import Encoded, Formatter, check_fields, render
from retune.errors import UsageError


@dataclass
class TaskData:
    name: str
    train: list[dict]  # empty for an evaluation-only task
    validation: list[dict]
    test: list[dict]
    template: TemplateConfig
    labels: list[str] | None
    metric: str  # a name in evaluate.metrics.METRICS
    scoring: str = "auto"  # auto | likelihood | generate (resolved by evaluate.task_eval.scoring_mode)
    weight: float | None = None  # sampling share in the mix (data.mixing: fractions)
    loss_weight: float = 1.0
    max_new_tokens: int | None = None  # None: eval.max_new_tokens
    stop: list[str] | None = None
    choices: list[str] | None = None  # columns of each option's text (cloze scoring)


def _as_source(src: str | SourceConfig) -> SourceConfig:
    return SourceConfig(path=src) if isinstance(src, str) else src


def read_source(src: str | SourceConfig, default_split: str, key: str = "data source") -> list[dict]:
    """A source's records: a file or folder when one is there, else a built-in dataset. `key` is the
    config key naming the source (data.train, stages[0].task.test), for error messages."""
    src = _as_source(src)
    path = Path(src.path).expanduser()
    if is_builtin(src.path) and not path.exists():
        records = load_builtin(src.path, src.split or default_split)
    elif not path.exists():
        raise UsageError(_not_found(src.path, key))
    else:
        records = read_records(src.path, src.format, src.split, encoding=src.encoding, key=key)
    return records[: src.limit] if src.limit else records


def _not_found(name: str, key: str) -> str:
    """A path that looks like a file (a suffix or a folder in it) is a missing file; a bare name is
    most likely a built-in's misspelled name."""
    path = Path(name).expanduser()
    if path.suffix.lower() in SUFFIX_FORMATS or len(path.parts) > 1:
        try:
            near = sorted(p.name for p in path.parent.iterdir())
        except OSError:  # no such folder (or not readable): no hint
            near = []
        hint = difflib.get_close_matches(path.name, near, n=1)
        fix = f"did you mean '{path.parent / hint[0]}'?" if hint else "check the path; it is read relative to the current directory"
        return f"{key}: data file not found: {name} ({fix})"
    hint = difflib.get_close_matches(name, list(BUILTIN_DATASETS), n=1)
    fix = f"did you mean '{hint[0]}'?" if hint else "give a path to a JSONL, JSON, CSV or Parquet file, or a built-in's name"
    return f"{key}: '{name}' is neither a file nor a built-in dataset ({fix}); built-ins: {', '.join(BUILTIN_DATASETS)}"


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
    """The single task of a config (the shorthand keys, or the first of data.tasks)."""
    return load_tasks(data, ev)[0]


def load_tasks(data: DataConfig, ev: EvalConfig, default_template: TemplateConfig | None = None) -> list[TaskData]:
    """Every task of a config: data.tasks, or the single-task keys as one task (names are unique:
    DataConfig checks them)."""
    return [load_task_config(t, data, ev, default_template) for t in data.task_list()]


def load_task_config(tc: TaskConfig, data: DataConfig, ev: EvalConfig, default_template: TemplateConfig | None = None) -> TaskData:
    """Read, split, cap and check one task's records. `data` gives the keys shared by all tasks;
    `default_template` is user data's template when the task has none (preference pairs: prompt -> chosen)."""
    anchor = tc.train if tc.train is not None else tc.test
    if anchor is None:  # TaskConfig's own check; a TaskConfig built with model_construct skips it
        raise UsageError(f"task {tc.name or '?'}: give a train source, or a test source for an evaluation-only task")
    anchor_src = _as_source(anchor)
    builtin = BUILTIN_DATASETS.get(anchor_src.path) if not Path(anchor_src.path).exists() else None
    name = tc.resolved_name()  # a built-in's name is its key: the stem of the source either way

    if tc.train is not None:
        train = _rename(read_source(tc.train, "train", tc.key("train")), tc.columns, anchor_src.path)
    else:
        train = []

    if tc.validation is not None:
        validation = _rename(read_source(tc.validation, "validation", tc.key("validation")), tc.columns, _as_source(tc.validation).path)
    elif builtin is not None and "validation" in builtin.splits:
        validation = read_source(SourceConfig(path=anchor_src.path, split="validation"), "validation")
    elif tc.train is None:
        validation = []  # evaluation-only: filled from the test set below
    else:  # hold out a deterministic slice of the training file
        rows = list(train)
        random.Random(data.shuffle_seed).shuffle(rows)
        n_val = max(1, round(len(rows) * tc.validation_split))
        if len(rows) - n_val < 1:
            raise UsageError(f"{anchor_src.path}: only {len(rows)} records, too few to hold out a validation split; add a validation set")
        validation, train = rows[:n_val], rows[n_val:]

    if tc.test is not None:
        test = _rename(read_source(tc.test, "test", tc.key("test")), tc.columns, _as_source(tc.test).path)
    elif builtin is not None and "test" in builtin.splits:
        test = read_source(SourceConfig(path=anchor_src.path, split="test"), "test")
    else:
        test = validation
    if not validation:
        validation = test

    if tc.max_train_samples:
        train = train[: tc.max_train_samples]
    if tc.max_eval_samples:
        validation, test = validation[: tc.max_eval_samples], test[: tc.max_eval_samples]
    if tc.max_val_samples:
        validation = validation[: tc.max_val_samples]

    template = tc.template or (builtin.template if builtin else None) or default_template
    if template is None and not data.messages_column:
        raise UsageError(f"task {name}: a template is required for user data, e.g. template: {{prompt: '{{q}}', response: '{{a}}'}}")
    template = template or TemplateConfig()
    if not data.messages_column:
        for rows, where in ((train, anchor_src.path), (validation, f"the {name} validation data"), (test, f"the {name} test data")):
            if rows:
                check_fields(template, rows, where)

    choices = tc.choices or (builtin.choices if builtin else None)
    if choices and not data.messages_column:
        for rows, where in ((validation, f"the {name} validation data"), (test, f"the {name} test data")):
            missing = [c for c in choices if rows and c not in rows[0]]
            if missing:
                raise UsageError(
                    f"{tc.key('choices')}: '{missing[0]}' is not a column of {where} (available: {', '.join(sorted(rows[0]))})"
                )
    if tc.shots:
        # a built-in's own train split in its fixed order (mmlu: the carved pool), else the task's training records
        pool = load_builtin(builtin.name, "train") if builtin is not None and "train" in builtin.splits else train
        if not pool:
            raise UsageError(f"{tc.key('shots')}: task {name} has no training split to draw {tc.shots} shots from; give it a train source")
        group = builtin.group if builtin is not None else ""
        validation, test = (with_shots(rows, pool, template, tc.shots, group) for rows in (validation, test))
        train = with_shots(train, [], template, 0, group)
        template = TemplateConfig(prompt="{_prompt}", response=template.response, system=template.system)

    labels = tc.labels or (builtin.labels if builtin else None)
    metric: str = tc.metric if tc.metric != "auto" else ev.metric
    if metric == "auto":
        metric = builtin.metric if builtin else ("accuracy" if labels else "rouge_l")
    scoring = tc.scoring if tc.scoring != "auto" else ev.scoring
    return TaskData(
        name, train, validation, test, template, labels, metric, scoring, tc.weight, tc.loss_weight, tc.max_new_tokens, tc.stop, choices
    )


def with_shots(records: list[dict], pool: list[dict], template: TemplateConfig, k: int, group: str) -> list[dict]:
    """Each record with `_prompt`: its rendered prompt after k solved examples of the pool (the first
    k with the record's `group` value, when there is a group column). The paragraph the record's prompt
    opens with (e.g. MMLU's "The following are ... about {topic}.") is written once, at the top, as in
    MMLU's own k-shot format; each shot is `prompt response` and a blank line."""
    out = []
    for r in records:
        prompt = render(template, r)[0]
        shots = [s for s in pool if not group or s.get(group) == r.get(group)][:k]
        head, sep, rest = prompt.partition("\n\n")
        shared = bool(sep) and all(render(template, s)[0].startswith(head + sep) for s in shots)
        lines = [head + sep] if shared and shots else []
        for s in shots:
            p, resp, _ = render(template, s)
            lines.append((p[len(head + sep) :] if shared else p) + " " + resp + "\n\n")
        lines.append(rest if shared and shots else prompt)
        out.append({**r, "_prompt": "".join(lines)})
    return out


def encode_records(fmt: Formatter, template: TemplateConfig, records: list[dict], where: str) -> list[Encoded]:
    return [fmt.encode_record(template, r, f"{where} record {i + 1}") for i, r in enumerate(records)]
