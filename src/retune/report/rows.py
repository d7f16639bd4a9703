"""One row per run: what `retune runs` lists and what a comparison report tabulates (one definition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retune.errors import UsageError
from retune.report.data import RunData
from retune.rundir import is_run_dir

COLUMNS = ("name", "status", "base", "adapter", "score", "change", "worst_retained", "tokens_per_s", "wall_s", "date")


def run_row(run: RunData) -> dict[str, Any]:
    """Scores in points; `score` and `change` average the tasks (a sortable one-number summary)."""
    train = run.summary.get("train") or {}
    tasks = run.scores()
    changes = [t["change"] for t in tasks if t["change"] is not None]
    return {
        "name": run.name,
        "status": run.status,
        "base": run.base_model,
        "adapter": run.adapter,
        "tasks": tasks,
        "score": sum(t["tuned"] for t in tasks) / len(tasks) if tasks else None,
        "change": sum(changes) / len(changes) if changes else None,
        "worst_retained": run.worst_retained(),
        "tokens_per_s": train.get("tokens_per_second"),
        "wall_s": train.get("wall_seconds"),
        "date": run.date,
        "path": str(run.run.path),
    }


def find_runs(folder: str | Path) -> list[RunData]:
    """Every run directory directly under `folder` (a run whose files cannot be read is listed as unreadable)."""
    root = Path(folder)
    if not root.is_dir():
        why = "no such folder" if not root.exists() else "a file, not a folder"
        raise UsageError(f"{root}: {why}; give the folder that holds run directories (output.dir, e.g. runs)")
    out = []
    for p in sorted(root.iterdir()):
        if not is_run_dir(p):
            continue
        try:
            out.append(RunData.load(p))
        except UsageError as e:
            out.append(RunData.unreadable(p, str(e)))
    return out


def sort_rows(rows: list[dict[str, Any]], column: str, reverse: bool = False) -> list[dict[str, Any]]:
    """Rows by one column; runs without a value go last either way."""
    if column not in COLUMNS:
        raise UsageError(f"--sort {column}: not a column; use one of {', '.join(COLUMNS)}")
    have = [r for r in rows if r[column] is not None]
    return sorted(have, key=lambda r: r[column], reverse=reverse) + [r for r in rows if r[column] is None]


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return ""
    return f"{value:{spec}}" if isinstance(value, int | float) else str(value)


def task_cell(row: dict[str, Any]) -> str:
    """`task metric tuned (+change)` per task, one per line."""
    parts = []
    for t in row["tasks"]:
        change = "" if t["change"] is None else f" ({t['change']:+.1f})"
        parts.append(f"{t['task']} {t['metric']} {t['tuned']:.1f}{change}")
    return "\n".join(parts)


def cells(row: dict[str, Any]) -> list[str]:
    """The row as text cells, in HEADERS order."""
    return [
        row["name"],
        row["status"],
        Path(row["base"]).name if "/" in row["base"] else row["base"],  # a model folder: its name
        row["adapter"],
        task_cell(row),
        fmt(row["worst_retained"], "+.2f"),
        fmt(row["tokens_per_s"], ",.0f"),
        fmt(row["wall_s"], ".0f"),
        row["date"],
    ]


HEADERS = ("run", "status", "base model", "adapter", "tasks: tuned (change), points", "worst retained change", "tokens/s", "wall s", "date")
