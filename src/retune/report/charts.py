"""The report's charts as Plotly figures: curves over steps (one colour per run), scores with their
intervals, forgetting against trainer.max_forgetting, the stage matrix and a search's Pareto front.
Each function returns None when the runs hold nothing to draw."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

from retune.report.data import RunData

PALETTE = qualitative.Plotly


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def figure(title: str, x: str, y: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis_title=x,
        yaxis_title=y,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def label(run: RunData, what: str, several: bool) -> str:
    return f"{run.name}: {what}" if several else what


def stage_lines(fig: go.Figure, runs: list[RunData]) -> None:
    """Dotted lines where each stage of a (single) stages run begins."""
    if len(runs) != 1:
        return
    tasks = runs[0].tasks if runs[0].summary.get("stages") else []
    for stage, offset in runs[0].stage_offsets().items():
        name = tasks[stage - 1] if stage - 1 < len(tasks) else f"stage {stage}"
        fig.add_vline(x=offset + 0.5, line_dash="dot", line_color="grey", annotation_text=name, annotation_position="top right")


def loss_curves(runs: list[RunData]) -> go.Figure | None:
    """Training loss, validation loss and each task's validation loss over optimizer steps."""
    several = len(runs) > 1
    fig = figure("loss over training", "optimizer step", "token NLL")
    for i, run in enumerate(runs):
        for key, mode, dash in [("loss", "lines", "solid"), ("val_loss", "lines+markers", "dash")]:
            xs, ys = run.series(key)
            if xs:
                name = label(run, "train loss" if key == "loss" else "validation loss", several)
                fig.add_scatter(x=xs, y=ys, mode=mode, name=name, line={"color": colour(i), "dash": dash, "width": 1.5})
        for j, key in enumerate(run.keys("val_loss/")):
            xs, ys = run.series(key)
            task_colour = colour(i) if several else colour(j + 1)
            name = label(run, f"validation loss: {key.split('/', 1)[1]}", several)
            fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=name, line={"color": task_colour, "dash": "dot", "width": 1})
    stage_lines(fig, runs)
    return fig if fig.data else None


def lr_schedule(runs: list[RunData]) -> go.Figure | None:
    several = len(runs) > 1
    fig = figure("learning rate", "optimizer step", "learning rate", height=280)
    for i, run in enumerate(runs):
        xs, ys = run.series("lr")
        if xs:
            fig.add_scatter(x=xs, y=ys, mode="lines", name=label(run, "lr", several), line={"color": colour(i)})
    stage_lines(fig, runs)
    return fig if fig.data else None


def intervals(run: RunData, stage: str) -> dict[str, tuple[float, float, float]]:
    """{task: (mean, low, high)} in points for the task's primary metric, from summary.json `uncertainty`."""
    u = (run.summary.get("uncertainty") or {}).get(stage) or {}
    out = {}
    for s in run.scores():
        ci = (u.get(s["task"]) or {}).get(s["metric"])
        if ci:
            out[s["task"]] = (100 * ci["mean"], 100 * ci["low"], 100 * ci["high"])
    return out


def error_bar(values: list[float | None], cis: list[tuple[float, float, float] | None]) -> dict[str, Any]:
    plus = [ci[2] - ci[0] if ci else 0 for ci in cis]
    minus = [ci[0] - ci[1] if ci else 0 for ci in cis]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "visible": any(cis)}


def scores(runs: list[RunData]) -> go.Figure | None:
    """Base and tuned score per task (points) with 95% intervals."""
    several = len(runs) > 1
    fig = figure("base vs tuned (points, 95% intervals)", "task", "score (points)")
    for i, run in enumerate(runs):
        rows = run.scores()
        if not rows:
            continue
        x = [f"{r['task']} ({r['metric']})" for r in rows]
        base_ci, tuned_ci = intervals(run, "base"), intervals(run, run.after)
        if any(r["base"] is not None for r in rows):
            fig.add_bar(
                x=x,
                y=[r["base"] for r in rows],
                name=label(run, "base", several),
                marker={"color": colour(i), "opacity": 0.35},
                error_y=error_bar([r["base"] for r in rows], [base_ci.get(r["task"]) for r in rows]),
            )
        fig.add_bar(
            x=x,
            y=[r["tuned"] for r in rows],
            name=label(run, "tuned", several),
            marker={"color": colour(i)},
            error_y=error_bar([r["tuned"] for r in rows], [tuned_ci.get(r["task"]) for r in rows]),
        )
    fig.update_layout(barmode="group")
    return fig if fig.data else None


def changes(runs: list[RunData]) -> go.Figure | None:
    """Each task's change base -> tuned with its paired bootstrap 95% interval."""
    several = len(runs) > 1
    fig = figure("change base -> tuned (points, paired 95% intervals)", "change (points)", "task")
    for i, run in enumerate(runs):
        change = (run.summary.get("uncertainty") or {}).get("change") or {}
        found = [(s["task"], s["metric"], (change.get(s["task"]) or {}).get(s["metric"])) for s in run.scores()]
        rows: list[tuple[str, str, dict[str, Any]]] = [(t, m, c) for t, m, c in found if c]
        if rows:
            fig.add_scatter(
                x=[100 * c["delta"] for _, _, c in rows],
                y=[f"{t} ({m})" for t, m, _ in rows],
                mode="markers",
                name=label(run, "change", several),
                marker={"color": colour(i), "size": 10},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [100 * (c["high"] - c["delta"]) for _, _, c in rows],
                    "arrayminus": [100 * (c["delta"] - c["low"]) for _, _, c in rows],
                },
            )
    fig.add_vline(x=0, line_color="grey")
    return fig if fig.data else None


def forgetting(runs: list[RunData]) -> go.Figure | None:
    """Each retained task's forgetting (points lost; the probe: NLL rise x 100) at each evaluation,
    the max_forgetting line, and where the gate stopped the run or rolled it back."""
    several = len(runs) > 1
    fig = figure("forgetting at each evaluation (points lost; probe: NLL rise x 100)", "optimizer step", "forgetting (points)")
    for i, run in enumerate(runs):
        for j, key in enumerate(run.keys("forgetting/")):
            xs, ys = run.series(key)
            name = label(run, key.split("/", 1)[1], several)
            line = {"color": colour(i), "dash": ["solid", "dash", "dot"][j % 3]} if several else {"color": colour(j)}
            fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=name, line=line)
        for e in run.events("max_forgetting"):
            fig.add_vline(x=e["global_step"], line_color="red", annotation_text=f"stopped: {', '.join(e.get('tasks', []))}")
        for e in run.events("loaded_retained"):
            fig.add_vline(x=e["global_step"], line_color="green", line_dash="dash", annotation_text="rolled back to here")
    if not fig.data:
        return None
    thresholds = {run.section("trainer").get("max_forgetting") for run in runs} - {None}
    for t in thresholds:
        fig.add_hline(y=t, line_color="red", line_dash="dot", annotation_text=f"max_forgetting {t}")
    stage_lines(fig, runs)
    return fig


def stage_matrix(run: RunData) -> go.Figure | None:
    """R[i][j]: the score on task j after stage i (points), the base model's row first."""
    st = run.summary.get("stages")
    if not isinstance(st, dict) or not st.get("R"):
        return None
    tasks, R, baseline = st["tasks"], st["R"], st.get("baseline") or []
    rows = ([baseline] if baseline else []) + R
    names = (["base"] if baseline else []) + [f"after {t}" for t in tasks[: len(R)]]
    fig = figure("R: score on each task after each stage (points)", "evaluated task", "", height=120 + 60 * len(rows))
    fig.add_heatmap(
        z=rows,
        x=tasks,
        y=names,
        colorscale="Viridis",
        text=[[f"{v:.1f}" for v in r] for r in rows],
        texttemplate="%{text}",
        hoverongaps=False,
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def pareto(trials: list[dict], front: list[int]) -> go.Figure | None:
    """A search's trials: gain on the task against the worst retained change; the Pareto front joined."""
    done = [t for t in trials if isinstance(t.get("values"), list) and len(t["values"]) >= 2]
    if not done:
        return None
    fig = figure("search: gain vs worst retained change", "worst retained change (points)", "gain (points)")
    other = [t for t in done if t["number"] not in front]
    best = sorted((t for t in done if t["number"] in front), key=lambda t: t["values"][1])

    def hover(t: dict) -> str:
        return f"trial {t['number']}<br>" + "<br>".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())

    for group, name, style in [
        (other, "trial", {"color": "lightgrey", "size": 8}),
        (best, "Pareto front", {"color": colour(1), "size": 11}),
    ]:
        if group:
            fig.add_scatter(
                x=[t["values"][1] for t in group],
                y=[t["values"][0] for t in group],
                mode="lines+markers" if name == "Pareto front" else "markers",
                name=name,
                marker=style,
                text=[hover(t) for t in group],
                hoverinfo="text",
            )
    return fig
