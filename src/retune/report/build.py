"""Building report.html: the page of one run, of several runs compared, of a search directory."""

from __future__ import annotations

from html import escape
from pathlib import Path

from retune.errors import UsageError
from retune.io import write_text
from retune.report import charts, examples, tables
from retune.report.data import RunData
from retune.report.page import Section, page
from retune.report.search import Search, is_search_dir
from retune.rundir import is_run_dir

REPORT = "report.html"


def run_page(run: RunData) -> str:
    sections = [
        Section("run", "run", [tables.identity(run)]),
        Section("data", "data", [tables.data(run)]),
        Section("scores", "base vs tuned", [charts.scores([run]), charts.changes([run]), tables.score_intervals(run)]),
        Section("training", "training", [charts.loss_curves([run]), charts.lr_schedule([run])]),
        Section("retention", "retention", [charts.forgetting([run]), tables.retention(run)]),
        Section("stages", "stages", [charts.stage_matrix(run), tables.stage_summary(run)]),
        Section("examples", "changed examples", [examples.section(run)]),
    ]
    return page(f"retune run {run.name}", f"{run.run.path} · {run.status}", sections)


def compare_page(runs: list[RunData], title: str = "", extra: list[Section] | None = None) -> str:
    details = "".join(f"<details><summary>{escape(r.name)}</summary>{tables.identity(r)}</details>" for r in runs)
    sections = (extra or []) + [
        Section("compare", "runs compared", [tables.comparison(runs)]),
        Section("scores", "base vs tuned", [charts.scores(runs), charts.changes(runs)]),
        Section("training", "training", [charts.loss_curves(runs), charts.lr_schedule(runs)]),
        Section("retention", "retention", [charts.forgetting(runs)]),
        Section("runs", "each run", [details]),
    ]
    return page(title or f"retune: {len(runs)} runs compared", " · ".join(r.name for r in runs), sections)


def search_page(search: Search) -> str:
    front = search.front()
    extra = [Section("search", "search", [charts.pareto(search.trials, front), search.table(front)])]
    runs = search.runs()
    return compare_page(runs, f"retune search {search.path.name}", extra) if runs else page(f"retune search {search.path.name}", "", extra)


def build(paths: list[str], out: str | None = None) -> Path:
    """Write the report of one run, several runs, or a search directory; returns its path."""
    if not paths:
        raise UsageError("give one or more run directories (or a search directory with tune.json)")
    if len(paths) == 1 and is_search_dir(paths[0]):
        html, default = search_page(Search.load(paths[0])), Path(paths[0]) / REPORT
    elif len(paths) == 1:
        if not is_run_dir(paths[0]):
            why = "no such folder" if not Path(paths[0]).exists() else "no config.yaml, no tune.json"
            raise UsageError(f"{paths[0]} is not a run directory or a search directory ({why}); give the folder that retune train printed")
        run = RunData.load(paths[0])
        html, default = run_page(run), run.run.path / REPORT
    else:
        html, default = compare_page([RunData.load(p) for p in paths]), Path(REPORT)
    target = Path(out) if out else default
    if target.is_dir():
        raise UsageError(f"-o {target} is a folder; give a file name, e.g. -o {target / REPORT}")
    write_text(target, html)
    return target


def write_run_report(path: str | Path) -> Path:
    """RUN/report.html, as `retune train` writes it at the end of a run."""
    return build([str(path)])
