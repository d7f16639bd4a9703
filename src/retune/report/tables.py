"""The report's tables as HTML: the run's identity, tasks and data, scores with intervals, retention,
the stage summary and the runs compared. Every value is escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from retune.report.data import RunData
from retune.report.rows import HEADERS, cells, fmt, run_row


def table(headers: list[str] | tuple[str, ...], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pairs(items: list[tuple[str, Any]]) -> str:
    """A two-column key/value table, leaving out what the run did not record."""
    return table(["", ""], [[k, v] for k, v in items if v not in (None, "", [], {})], "kv")


def hyper_parameters(run: RunData) -> list[tuple[str, Any]]:
    t, a = run.section("trainer"), run.section("adapter")
    keys = ["epochs", "max_steps", "batch_size", "grad_accum", "lr", "scheduler", "warmup_ratio", "weight_decay", "precision", "seed"]
    keys += ["eval_every", "max_forgetting", "select"]
    out = [(f"trainer.{k}", t.get(k)) for k in keys]
    out += [(f"adapter.{k}", a.get(k)) for k in ("r", "alpha", "dropout", "target_modules") if a.get("type") not in ("full", None)]
    methods = [m.get("method") for m in run.config.get("retention") or [] if isinstance(m, dict)]
    return out + [("retention", ", ".join(str(m) for m in methods))]


def identity(run: RunData) -> str:
    """Who and what: the model, adapter, key hyper-parameters, where it ran and how fast."""
    tr, env = run.summary.get("train") or {}, run.summary.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    params = f"{tr['trainable_params']:,} of {tr['total_params']:,}" if "trainable_params" in tr else None
    who: list[tuple[str, Any]] = [
        ("run", run.name),
        ("status", run.summary.get("status") or run.status),
        ("started (UTC)", run.date),
        ("base model", run.base_model),
        ("adapter", run.adapter),
        ("trainable parameters", params),
        ("retune commit", env.get("retune_commit")),
        ("machine", " / ".join(str(env[k]) for k in ("host", "cpu", "gpu") if env.get(k))),
        ("versions", versions),
    ]
    speed: list[tuple[str, Any]] = [
        ("allocator", tr.get("allocator")),
        ("steps", tr.get("steps")),
        ("tokens", fmt(tr.get("tokens"), ",")),
        ("tokens/s", fmt(tr.get("tokens_per_second"), ",.0f")),
        ("training seconds", fmt(tr.get("train_seconds"), ".1f")),
        ("wall seconds", fmt(tr.get("wall_seconds"), ".1f")),
        ("peak memory (MB, RSS)", fmt(tr.get("peak_memory_mb"), ",.0f")),
        ("best step", tr.get("best_step")),
        ("stopped early", tr.get("stopped_early")),
    ]
    return f'<div class="grid">{pairs(who)}{pairs(hyper_parameters(run))}{pairs(speed)}</div>'


def data(run: RunData) -> str:
    """Each task's data: sizes, metric, scoring, share of the mix, content hash; the retained sets' hashes."""
    rows = [
        [
            name,
            t.get("metric"),
            t.get("scoring"),
            t.get("train_examples"),
            t.get("n_test"),
            fmt(t.get("share"), ".2f"),
            t.get("data_sha256", "")[:16],
        ]
        for name, t in (run.summary.get("tasks") or {}).items()
    ]
    rows += [[name, "retained", "", "", "", "", h[:16]] for name, h in (run.summary.get("retention_data") or {}).items()]
    if not rows:
        return ""
    return table(["task", "metric", "scoring", "train examples", "test examples", "share", "sha256 (first 16)"], rows)


def ci_text(ci: dict | None) -> str:
    return f"{100 * ci['mean']:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" if ci else ""


def score_intervals(run: RunData) -> str:
    """Per task and metric: n, base and tuned with 95% intervals, the paired change and its interval (points)."""
    u = run.summary.get("uncertainty") or {}
    base, tuned, change = u.get("base") or {}, u.get(run.after) or {}, u.get("change") or {}
    rows = []
    for task, metrics in tuned.items():
        for k, ci in metrics.items():
            c = (change.get(task) or {}).get(k)
            delta = (
                f"{100 * c['delta']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]{' *' if c['significant'] else ''}" if c else ""
            )
            rows.append([task, k, ci["n"], ci_text((base.get(task) or {}).get(k)), ci_text(ci), delta])
    if not rows:
        return ""
    return table(["task", "metric", "n", "base [95% CI]", "tuned [95% CI]", "change [paired 95% CI] (* excludes 0)"], rows)


def retention(run: RunData) -> str:
    """Each retained task's base, final, change and forgetting; against max_forgetting when the run set one."""
    limit = run.section("trainer").get("max_forgetting")
    rows = []
    for name, r in (run.summary.get("retention") or {}).items():
        spec = ".4f" if r.get("metric") == "nll" else ".2f"
        change = fmt(r["delta"], "+" + spec)
        if "ci" in r:  # the paired 95% interval over the same examples; * it excludes 0
            change += f" [{fmt(r['ci'][0], '+' + spec)}, {fmt(r['ci'][1], '+' + spec)}]{' *' if r.get('significant') else ''}"
        row = [name, r["metric"], str(r.get("n", "")), fmt(r["base"], spec), fmt(r["final"], spec), change, fmt(r["forgetting"], "+.2f")]
        rows.append(row + ([] if limit is None else ["yes" if r["forgetting"] <= limit else "no"]))
    headers = ["retained task", "metric", "n", "base", "final", "change [paired 95% CI]", "forgetting (points)"]
    return table(headers + ([] if limit is None else [f"within max_forgetting ({limit})"]), rows) if rows else ""


def stage_summary(run: RunData) -> str:
    st = run.summary.get("stages")
    if not isinstance(st, dict):
        return ""
    items = [
        (k.replace("_", " "), fmt(st.get(k), "+.2f" if "transfer" in k else ".2f"))
        for k in ("average_accuracy", "backward_transfer", "forward_transfer")
    ]
    return pairs([(k, v or "n/a") for k, v in items])


def comparison(runs: list[RunData]) -> str:
    return table(HEADERS, [cells(run_row(r)) for r in runs], "compare")
