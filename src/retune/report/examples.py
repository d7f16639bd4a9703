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


def common_prefix(texts: list[str]) -> str:
    first, last = min(texts), max(texts)  # the lexicographic extremes share what every text shares
    n = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
    return first[:n]


def shared(prompts: list[str]) -> tuple[str, str]:
    """The beginning and end every prompt shares (a chat template, a system prompt, an instruction),
    shown once above the table rather than in each row; nothing when fewer than two prompts."""
    if len(prompts) < 2:
        return "", ""
    head = common_prefix(prompts)
    head = head[: head.rfind("\n") + 1]  # whole lines only: never half a word of the example itself
    tail = common_prefix([p[len(head) :][::-1] for p in prompts])[::-1]
    return head, tail[tail.find("\n") :] if "\n" in tail else ""


def row_html(e: dict[str, Any], head: str = "", tail: str = "") -> str:
    cells = [e["task"], e["kind"], f"{e['base']:.3g} → {e['tuned']:.3g}"]
    prompt = str(e["after"].get("prompt", ""))
    texts = [
        ("…" if head else "") + prompt[len(head) : len(prompt) - len(tail)] + ("…" if tail else ""),
        e["before"].get("prediction", ""),
        e["after"].get("prediction", ""),
        e["after"].get("reference", ""),
    ]
    tds = "".join(f"<td>{escape(c)}</td>" for c in cells) + "".join(f'<td class="text">{clip(t)}</td>' for t in texts)
    return f'<tr data-dir="{e["dir"]}" data-task="{escape(e["task"])}">{tds}</tr>'


def section(run: RunData) -> str:
    """The filterable table, or '' when the run kept no per-example scores of both models."""
    body, notes, shared_parts, n = [], [], [], 0
    for task in run.tasks:
        shown, total = changed(run, task)
        head, tail = shared([str(e["after"].get("prompt", "")) for e in shown])
        body += [row_html(e, head, tail) for e in shown]
        n += len(shown)
        notes.append(f"{task}: {total} changed" + (f" (the {LIMIT} largest shown)" if total > len(shown) else ""))
        if head or tail:
            shared_parts.append(
                f"<details><summary>{escape(task)}: the part of every prompt shown as …</summary>"
                f'<pre class="text">{escape(head)}…{escape(tail)}</pre></details>'
            )
    if not any(run.examples(t, "base") for t in run.tasks):
        return ""
    options = "".join(f'<option value="{escape(t)}">{escape(t)}</option>' for t in run.tasks)
    controls = (
        '<div class="filters"><input id="example-filter" type="search" placeholder="filter: text in prompt, answers or reference">'
        '<select id="example-dir"><option value="">both directions</option><option value="worse">worse (right to wrong)</option>'
        '<option value="better">better (wrong to right)</option></select>'
        f'<select id="example-task"><option value="">every task</option>{options}</select>'
        f' <span id="example-count">{n}</span> shown; {escape("; ".join(notes))}</div>'
    )
    columns = "".join(f"<th>{h}</th>" for h in ("task", "change", "score", "prompt", "base answer", "tuned answer", "reference"))
    rows = "".join(body)
    return f'{controls}{"".join(shared_parts)}<table id="examples"><thead><tr>{columns}</tr></thead><tbody>{rows}</tbody></table>'


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
