"""The HTML page: one file with Plotly's script and the styles inlined, so it opens from disk (file://)
with no network request, and can be attached to a ticket as it is."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from retune.report.examples import FILTER_JS

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5rem 3rem;
       color: #222; }
h1 { font-size: 1.5rem; margin: 1.2rem 0 0.3rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem;
       margin-top: 2rem; }
nav a { margin-right: 1rem; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } table.kv thead { display: none; } table.kv td:first-child { color: #555; white-space: nowrap; }
td { white-space: pre-wrap; } td.text { font-family: ui-monospace, monospace; font-size: 0.78rem; max-width: 22rem;
       word-break: break-word; }
tr[data-dir="worse"] td:nth-child(2) { color: #b00020; } tr[data-dir="better"] td:nth-child(2) { color: #1b7f3b; }
.filters { margin: 0.6rem 0; } .filters input { width: 26rem; padding: 0.2rem; } .muted { color: #777; font-size: 0.85rem; }
.grid { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: flex-start; }
details { margin: 0.5rem 0; } summary { cursor: pointer; }
"""


@dataclass
class Section:
    anchor: str
    title: str
    parts: list[str | go.Figure | None]

    def html(self) -> str:
        body = "".join(render(p) for p in self.parts if p is not None and p != "")
        return f'<section id="{self.anchor}"><h2>{escape(self.title)}</h2>{body}</section>' if body else ""


def render(part: str | go.Figure) -> str:
    if isinstance(part, go.Figure):
        return part.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    return part


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    bodies = [(s, s.html()) for s in sections]
    bodies = [(s, b) for s, b in bodies if b]
    nav = "".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s, _ in bodies)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
        "style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f'<h1>{escape(title)}</h1><div class="muted">{escape(subtitle)}</div><nav>{nav}</nav>'
        + "".join(b for _, b in bodies)
        + f"<script>{FILTER_JS}</script></body></html>\n"
    )
