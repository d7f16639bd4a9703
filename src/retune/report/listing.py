"""`retune runs`: the run directories under a folder as a terminal table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from retune.report.rows import HEADERS, cells

STATUS_STYLE = {"completed": "green", "failed": "red", "interrupted": "yellow", "unreadable": "red"}


def print_runs(folder: str, rows: list[dict[str, Any]]) -> None:
    """The table on stdout (it is what the command was asked for); an empty folder says so."""
    console = Console()
    if not console.is_terminal:  # piped or redirected: wide enough that nothing is cut
        console.width = 220
    if not rows:
        console.print(f"no run directories under {folder} (a run directory holds config.yaml)")
        return
    table = Table(title=f"runs under {folder}")
    for h in HEADERS:
        table.add_column(h, justify="right" if h in ("worst retained change", "tokens/s", "wall s") else "left")
    for row in rows:
        text = [Text(c) for c in cells(row)]  # plain text: a run name with [brackets] is not markup
        text[1].stylize(STATUS_STYLE.get(row["status"], ""))
        table.add_row(*text)
    console.print(table)
