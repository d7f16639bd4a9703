"""The test examples whose outcome changed from base to tuned: prompt, both answers, the reference
and both scores; right-to-wrong first; a filter (text, direction, task) that runs in the page."""

from __future__ import annotations

from html import escape
from typing import Any

from retune.report.data import RunData

LIMIT = 400  # rows per task in the page (the largest changes), so a big test set keeps the file small
CLIP = 1200  # characters of a prompt or answer shown


def score_key(row: dict[str, Any]) -> str | None:
    return next((k for k in row if k not in ("i", "prompt", "prediction", "reference") and isinstance(row[k], int | float)), None)


def changed(run: RunData, task: str) -> tuple[list[dict[str, Any]], int]:
    """(the changed examples, worst first, at most LIMIT; how many changed in all)."""
    base = {r["i"]: r for r in run.examples(task, "base")}
    out: list[dict[str, Any]] = []
    for after in run.examples(task, run.after):
        before, key = base.get(after["i"]), score_key(after)
        if before is None or key is None or key not in before or before[key] == after[key]:
            continue
        b, a = float(before[key]), float(after[key])
        binary = {b, a} <= {0.0, 1.0}
        direction = "worse" if a < b else "better"
        kind = ("right to wrong" if a < b else "wrong to right") if binary else direction
        out.append({"task": task, "metric": key, "dir": direction, "kind": kind, "base": b, "tuned": a, "before": before, "after": after})
    out.sort(key=lambda e: (e["dir"] != "worse", e["tuned"] - e["base"] if e["dir"] == "worse" else e["base"] - e["tuned"]))
    return out[:LIMIT], len(out)


def clip(text: object) -> str:
    s = str(text)
    return escape(s if len(s) <= CLIP else s[:CLIP] + " …")


def row_html(e: dict[str, Any]) -> str:
    cells = [e["task"], e["kind"], f"{e['base']:.3g} → {e['tuned']:.3g}"]
    texts = [
        e["after"].get("prompt", ""),
        e["before"].get("prediction", ""),
        e["after"].get("prediction", ""),
        e["after"].get("reference", ""),
    ]
    tds = "".join(f"<td>{escape(c)}</td>" for c in cells) + "".join(f'<td class="text">{clip(t)}</td>' for t in texts)
    return f'<tr data-dir="{e["dir"]}" data-task="{escape(e["task"])}">{tds}</tr>'


def section(run: RunData) -> str:
    """The filterable table, or '' when the run kept no per-example scores of both models."""
    rows, notes = [], []
    for task in run.tasks:
        shown, total = changed(run, task)
        rows += shown
        notes.append(f"{task}: {total} changed" + (f" (the {LIMIT} largest shown)" if total > len(shown) else ""))
    if not any(run.examples(t, "base") for t in run.tasks):
        return ""
    options = "".join(f'<option value="{escape(t)}">{escape(t)}</option>' for t in run.tasks)
    controls = (
        '<div class="filters"><input id="example-filter" type="search" placeholder="filter: text in prompt, answers or reference">'
        '<select id="example-dir"><option value="">both directions</option><option value="worse">worse (right to wrong)</option>'
        '<option value="better">better (wrong to right)</option></select>'
        f'<select id="example-task"><option value="">every task</option>{options}</select>'
        f' <span id="example-count">{len(rows)}</span> shown; {escape("; ".join(notes))}</div>'
    )
    head = "".join(f"<th>{h}</th>" for h in ("task", "change", "score", "prompt", "base answer", "tuned answer", "reference"))
    body = "".join(row_html(e) for e in rows)
    return f'{controls}<table id="examples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


FILTER_JS = """
(function () {
  var text = document.getElementById('example-filter');
  if (!text) return;
  var dir = document.getElementById('example-dir'), task = document.getElementById('example-task');
  var rows = document.querySelectorAll('#examples tbody tr'), count = document.getElementById('example-count');
  function apply() {
    var q = text.value.toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var ok = (!q || r.textContent.toLowerCase().indexOf(q) >= 0) && (!dir.value || r.dataset.dir === dir.value)
        && (!task.value || r.dataset.task === task.value);
      r.style.display = ok ? '' : 'none';
      n += ok ? 1 : 0;
    });
    count.textContent = n;
  }
  [text, dir, task].forEach(function (el) { el.addEventListener('input', apply); el.addEventListener('change', apply); });
})();
"""
