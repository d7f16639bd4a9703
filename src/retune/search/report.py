"""What a search reports: each trial's objectives (from its run's summary.json), tune.json, the Pareto
front as a table and a plot, and best.yaml.

tune.json = {"study", "storage", "objectives": [{"name", "direction"}], "trials": [{"number", "state",
"params", "values", "run_dir", "intervals", "reason", ...}], "front": [numbers], "best": number | null}.
Scores are in points (the metric x 100); a retained change is negative when the model forgot (the
probe's NLL rise x 100 counts as a drop).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from retune.evaluate.forgetting import primary
from retune.evaluate.report import console
from retune.io import write_json, write_text
from retune.search.study import DIRECTIONS


def outcome(summary: dict[str, Any]) -> dict[str, Any]:
    """A finished run's objectives and their intervals: score (mean new-task metric, points), gain
    over the base with the paired 95% interval, each retained change and the worst of them."""
    final, base = summary["final"], summary.get("base") or {}
    tasks = list(final)
    score = sum(primary(t, final[t])[1] for t in tasks) / len(tasks)
    out: dict[str, Any] = {"score": score, "gain": None, "intervals": {}}
    if all(t in base for t in tasks):
        out["gain"] = score - sum(primary(t, base[t])[1] for t in tasks) / len(tasks)
    change = (summary.get("uncertainty") or {}).get("change", {})
    if len(tasks) == 1:
        metric = primary(tasks[0], final[tasks[0]])[0]
        c = change.get(tasks[0], {}).get(metric)
        if c:
            out["intervals"]["gain"] = {k: 100 * c[k] for k in ("delta", "low", "high")} | {"significant": c["significant"]}
    retention = summary.get("retention") or {}
    retained = {name: -r["forgetting"] for name, r in retention.items()}
    for name, r in retention.items():
        if "ci" in r:  # the change in points (the probe: minus its NLL rise x 100), with its paired interval
            lo, hi = (-100 * r["ci"][1], -100 * r["ci"][0]) if r["metric"] == "nll" else tuple(r["ci"])
            out["intervals"][name] = {"delta": retained[name], "low": lo, "high": hi, "significant": r["significant"]}
    out["retained"] = retained
    out["worst_retained"] = min(retained.values()) if retained else 0.0
    out["forgetting"] = max((-v for v in retained.values()), default=0.0)
    return out


def excess(out: dict[str, Any], max_forgetting: float, constraint: str) -> float:
    """How far a trial is over max_forgetting (<= 0: feasible): point, the largest measured drop;
    significant, the largest drop that the paired interval makes certain (the interval's upper end)."""
    drops = []
    for name, change in out["retained"].items():
        c = out["intervals"].get(name)
        drops.append(-c["high"] if constraint == "significant" and c else -change)
    return max(drops, default=0.0) - max_forgetting


def trial_row(t: Any) -> dict[str, Any]:
    o = t.user_attrs.get("outcome") or {}
    return {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "values": list(t.values) if t.values is not None else None,
        "run_dir": t.user_attrs.get("run_dir"),
        "intervals": o.get("intervals", {}),
        "score": o.get("score"),
        "gain": o.get("gain"),
        "retained": o.get("retained"),
        "feasible": t.user_attrs.get("feasible"),
        "reason": t.user_attrs.get("reason"),
        "retry_of": t.user_attrs.get("retry_of"),
        "worker": f"{t.user_attrs.get('host')}:{t.user_attrs.get('pid')}",
        "val_loss": t.user_attrs.get("val_loss", {}),
    }


def summarise(study: Any, objectives: Sequence[str], storage: str) -> dict[str, Any]:
    """tune.json's content: every trial, the Pareto front, the best feasible trial by score."""
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get("interrupted", []))
    trials = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    for row in trials:
        if row["number"] in interrupted:
            row["state"], row["reason"] = "FAIL", "interrupted (retried)"
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = sorted(t.number for t in study.best_trials) if done else []
    feasible = [t for t in done if t.user_attrs.get("feasible", True)]
    best = max(feasible, key=lambda t: (t.user_attrs["outcome"]["score"], t.user_attrs["outcome"]["worst_retained"]), default=None)
    return {
        "study": study.study_name,
        "storage": storage,
        "objectives": [{"name": o, "direction": DIRECTIONS[o]} for o in objectives],
        "trials": trials,
        "front": front,
        "best": best.number if best else None,
    }


def counts(report: dict[str, Any]) -> str:
    states = [t["state"] for t in report["trials"] if t["reason"] != "interrupted (retried)"]
    c = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return f"{c['COMPLETE']} completed, {c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running; front {len(report['front'])}"


def write_outputs(folder: Path, report: dict[str, Any], best_cfg: dict[str, Any] | None) -> None:
    """tune.json, front.png and best.yaml (each written whole)."""
    write_json(folder / "tune.json", report)
    plot_front(report, folder / "front.png")
    if best_cfg is not None:
        head = f"# retune train {folder / 'best.yaml'}\n# trial {report['best']} of study {report['study']} (tune.json)\n"
        write_text(folder / "best.yaml", head + yaml.safe_dump(best_cfg, sort_keys=False))


def worst(t: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """A trial's worst retained change (points) and that task's paired interval, if it has one."""
    if not t["retained"]:
        return 0.0, None
    name = min(t["retained"], key=t["retained"].get)
    return t["retained"][name], t["intervals"].get(name)


def _pm(value: float, c: dict[str, Any] | None) -> str:
    return f"{value:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]" if c else f"{value:+.2f}"


def print_front(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Pareto front of {report['study']}: new-task score vs worst retained change (points)")
    keys = sorted({k for t in report["trials"] for k in t["params"]})
    for col in ("trial", *keys, "score", "gain (95% CI)", "worst retained (95% CI)", "feasible"):
        table.add_column(col, justify="left" if col == "trial" else "right")
    for t in report["trials"]:
        if t["number"] not in report["front"]:
            continue
        g = t["intervals"].get("gain")
        table.add_row(
            f"{t['number']}{'*' if t['number'] == report['best'] else ''}",
            *[_fmt(t["params"].get(k)) for k in keys],
            f"{t['score']:.1f}",
            _pm(g["delta"], g) if g else ("" if t["gain"] is None else f"{t['gain']:+.1f}"),
            _pm(*worst(t)),
            "yes" if t["feasible"] in (True, None) else "no",
        )
    console.print(table)
    console.print("* best.yaml: the best new-task score among trials within tune.max_forgetting")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def plot_front(report: dict[str, Any], out_png: Path) -> None:
    """Gain against the worst retained change, each with its paired 95% interval; the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in report["trials"] if t["state"] == "COMPLETE" and t["retained"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    points = {}
    for t in done:
        on = t["number"] in report["front"]
        y = t["gain"] if t["gain"] is not None else t["score"]
        g = t["intervals"].get("gain")
        x, c = worst(t)
        points[t["number"]] = (x, y)
        yerr = [[max(y - g["low"], 0)], [max(g["high"] - y, 0)]] if g else None
        xerr = [[max(x - c["low"], 0)], [max(c["high"] - x, 0)]] if c else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color="C3" if on else "C0", alpha=1.0 if on else 0.45, capsize=3)
        ax.annotate(str(t["number"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = sorted(points[n] for n in report["front"] if n in points)
    if front:
        ax.plot(*zip(*front, strict=True), "-", color="C3", label="Pareto front")
        ax.legend()
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("worst retained change (points; < 0: forgot)")
    ax.set_ylabel("new-task gain over the base (points)")
    ax.set_title(f"{report['study']}: {len(done)} completed trials, paired 95% intervals")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=out_png.parent, prefix=f".{out_png.stem}.", suffix=".png")  # workers finish together
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out_png)
