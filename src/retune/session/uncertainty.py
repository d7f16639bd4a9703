"""Every task score with its uncertainty: per-example scores kept in the run directory
(`scores/<task>-<stage>.jsonl`), a 95% interval for each metric (Wilson for 0/1 scores, bootstrap
otherwise) and a paired bootstrap interval for each base -> tuned change over the same examples.
The math is in evaluate/intervals.py; this file is what a run records and prints."""

from __future__ import annotations

import json
from typing import Any

from retune.evaluate.intervals import format_pm, interval, paired_bootstrap
from retune.evaluate.report import console
from retune.evaluate.task_eval import TaskScores
from retune.io import read_jsonl, write_text
from retune.rundir import RunDir


def write_scores(run: RunDir, stage: str, task: str, scored: TaskScores) -> None:
    """scores/<task>-<stage>.jsonl: one line per test example (prompt, prediction, reference, scores)."""
    p = scored.predictions
    keys = list(scored.examples)
    lines = [
        json.dumps(
            {
                "i": i,
                "prompt": p.prompts[i],
                "prediction": p.predictions[i],
                "reference": p.references[i],
                **{k: scored.examples[k][i] for k in keys},
            },
            ensure_ascii=False,
        )
        for i in range(len(p.predictions))
    ]
    write_text(run.scores_file(task, stage), "".join(line + "\n" for line in lines))


def read_scores(run: RunDir, stage: str, tasks: list[str]) -> dict[str, dict[str, list[float]]]:
    """{task: {metric: per-example scores}} of one stage, from scores/ (tasks without a file are left out)."""
    out: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        path = run.scores_file(task, stage)
        if not path.exists():
            continue
        rows = read_jsonl(path)
        keys = [k for k in rows[0] if k not in ("i", "prompt", "prediction", "reference")] if rows else []
        out[task] = {k: [float(r[k]) for r in rows] for k in keys}
    return out


def intervals(examples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {metric: {n, mean, low, high, method}}} (in the metric's units, 0-1)."""
    return {task: {k: interval(k, v) for k, v in per.items()} for task, per in examples.items()}


def changes(base: dict[str, dict[str, list[float]]], final: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {metric: {delta, low, high, significant}}}: final - base on the same test examples, with a
    paired bootstrap 95% interval; significant when the interval excludes 0."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, after_by_metric in final.items():
        for k, after in after_by_metric.items():
            before = base.get(task, {}).get(k)
            if before is None or len(before) != len(after) or not after:
                continue
            delta, low, high = paired_bootstrap(before, after)
            out.setdefault(task, {})[k] = {"delta": delta, "low": low, "high": high, "significant": low > 0 or high < 0}
    return out


def uncertainty(run: RunDir, tasks: list[str], before: str, after: str) -> dict[str, Any]:
    """summary.json `uncertainty`: each stage's intervals and the paired changes between the two."""
    b, f = read_scores(run, before, tasks), read_scores(run, after, tasks)
    return {"confidence": 0.95, before: intervals(b), after: intervals(f), "change": changes(b, f)}


def print_intervals(title: str, base: dict[str, dict] | None, final: dict[str, dict], change: dict[str, dict]) -> None:
    """base ± interval, tuned ± interval and the paired change per task and metric, in points."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "metric", "n", "base", "tuned", "change (paired 95% CI)"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, metrics in final.items():
        for k, f in metrics.items():
            b = (base or {}).get(task, {}).get(k)
            c = change.get(task, {}).get(k)
            scale, digits = (1, 3) if k == "nll" else (100, 1)  # the probe's NLL in nats, scores in points

            def pm(x: dict, mean: str = "mean") -> str:
                return format_pm(x[mean], x["low"], x["high"], scale, digits)  # noqa: B023 (used in this iteration)

            table.add_row(
                task,
                k,
                str(f["n"]),
                pm(b) if b else "",
                pm(f),
                f"{pm(c, 'delta')}{' *' if c['significant'] else ''}" if c else "",
            )
    console.print(table)
    console.print("intervals: Wilson for 0/1 scores, bootstrap over examples otherwise; * the paired interval excludes 0")
