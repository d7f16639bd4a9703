"""What a person reads after a run: the base-vs-tuned table, the loss curve PNG, a live progress bar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from retune.io import read_jsonl

if TYPE_CHECKING:
    from rich.progress import TaskID

console = Console(stderr=True)


def score_table(title: str, base: dict[str, dict[str, float]] | None, final: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for col in ("task", "metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, scores in final.items():
        for metric, value in scores.items():
            if metric.startswith("n_"):
                continue
            b = (base or {}).get(task, {}).get(metric)
            change = "" if b is None else f"{value - b:+.4f}"
            table.add_row(task, metric, "" if b is None else f"{b:.4f}", f"{value:.4f}", change)
    return table


def print_scores(title: str, base: dict[str, dict[str, float]] | None, final: dict[str, dict[str, float]]) -> None:
    # Human-readable output goes to stderr; stdout stays machine-readable (paths, JSON).
    console.print(score_table(title, base, final))


def plot_loss(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path, torn_tail=True)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.2)
    tasks = sorted({k for r in rows for k in r if k.startswith("val_loss/")})
    for key in tasks:  # multi-task runs: each task's validation loss beside the pooled one
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), ".--", label=key.split("/", 1)[1], lw=0.9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token NLL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)


class LiveProgress:
    """A progress bar with ETA and the live loss (rich); plain log lines when not on a terminal."""

    def __init__(self, description: str = "training"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.tty = sys.stderr.isatty()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.tty,
        )
        self.description = description
        self.task: TaskID | None = None  # set by start()
        self.total = 0

    def start(self, total: int, done: int = 0) -> None:
        self.total = total
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total, completed=done, loss="-")

    def update(self, step: int, loss: float) -> None:
        assert self.task is not None, "start() comes first"
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")
        if not self.tty and (step % 25 == 0 or step == self.total):
            console.print(f"step {step}/{self.total} loss {loss:.4f}")

    def stop(self) -> None:
        self.progress.stop()
