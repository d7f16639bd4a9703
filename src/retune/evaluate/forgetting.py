"""Forgetting as a measured quantity: retained-task scores against the base model, the general-text
probe, the accuracy matrix of a task sequence (average accuracy, BWT, FWT) and its heat-map.

Scores are in points (metric x 100) so that "within 2 points" reads the same for every metric;
the probe is token NLL on general text (lower is better; its forgetting is the rise x 100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retune.config import DataConfig, EvalConfig, LmEvalConfig, RetainConfig
from retune.data.dataset import TaskData, load_task_config
from retune.data.templates import Encoded, Formatter, text_ids
from retune.errors import UsageError
from retune.evaluate import lmeval, scoring  # lmeval imports the harness only when a task is scored
from retune.evaluate.intervals import paired_bootstrap
from retune.evaluate.task_eval import TaskScores, score_task
from retune.io import read_jsonl
from retune.types import Autocast, Model, Tokenizer

PROBE = "general-text"  # the probe's row in summary.json `retention`


@dataclass
class Retained:
    task: TaskData
    val: list[Encoded]


@dataclass
class RetainSet:
    tasks: list[Retained]
    probe: list[Encoded]
    harness: list[LmEvalConfig] = field(default_factory=list)  # lm-evaluation-harness tasks (evaluate/lmeval.py)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.probe or self.harness)


def probe_texts(spec: str, n: int) -> list[str]:
    """Held-out general text: paragraphs of the stdlib's pydoc help topics, or a user .txt/.jsonl file."""
    if spec == "general":
        import pydoc_data.topics as topics

        paras = [p.strip() for key in sorted(topics.topics) for p in topics.topics[key].split("\n\n")]
        paras = [p for p in paras if len(p) > 200 and not p.startswith(" ")]  # prose, not code blocks
        return paras[::7][:n]  # spread over the topics, deterministic
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"retain.probe: {spec} is neither 'general' nor a file (.txt: one paragraph per blank-line block; .jsonl: a text column)"
        )
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        if not rows or "text" not in rows[0]:
            raise UsageError(f"retain.probe: {spec} needs a 'text' field in each JSON line")
        return [str(r["text"]) for r in rows][:n]
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()][:n]


def encode_plain(tok: Tokenizer, texts: list[str], max_length: int) -> list[Encoded]:
    """Raw text, loss on every token but the first (no template: it measures language, not a task).
    Tokenized as the tokenizer itself does (its BOS where it adds one: data/templates.py); cut on the right."""
    out = []
    for t in texts:
        ids = text_ids(tok, t)[:max_length]
        out.append(Encoded(ids, list(ids), 0))
    return out


def load_retained(retain: RetainConfig, data_cfg: DataConfig, ev: EvalConfig, tok: Tokenizer, fmt: Formatter) -> RetainSet:
    tasks = []
    for tc in retain.tasks:
        if tc.max_eval_samples is None and retain.max_eval_samples:
            tc = tc.model_copy(update={"max_eval_samples": retain.max_eval_samples})
        task = load_task_config(tc, data_cfg, ev)
        val = [fmt.encode_record(task.template, r, f"retained {task.name} record {i + 1}") for i, r in enumerate(task.validation)]
        tasks.append(Retained(task, val))
    probe = encode_plain(tok, probe_texts(retain.probe, retain.probe_samples), min(data_cfg.max_length, 256)) if retain.probe else []
    return RetainSet(tasks, probe, list(retain.lm_eval))


@dataclass
class RetainedScores:
    """What must be kept, scored once: each retained task's summary row ({PROBE: {nll}} for the probe)
    and each test example's score under the task's primary metric (0-1; the probe: each paragraph's
    share of the token-weighted NLL, so their mean is the probe's NLL), for paired intervals."""

    rows: dict[str, dict[str, Any]]
    examples: dict[str, list[float]]
    scored: dict[str, TaskScores]  # the retained tasks' full per-example scores (scores/<task>-<stage>.jsonl)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "examples": self.examples}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetainedScores:
        if "rows" not in data:  # base_retention.json of an earlier version: rows only, no intervals
            return cls(data, {}, {})
        return cls(data["rows"], data.get("examples", {}), {})


def score_retained(model: Model, tok: Tokenizer, fmt: Formatter, rset: RetainSet, ev: EvalConfig, autocast: Autocast) -> RetainedScores:
    """Every retained task (its metric, val_loss ...) and the probe's NLL, with per-example scores."""
    out = RetainedScores({}, {}, {})
    for r in rset.tasks:
        task_ev = ev.model_copy(update={"max_new_tokens": r.task.max_new_tokens}) if r.task.max_new_tokens else ev
        scored = score_task(model, tok, fmt, r.task, r.val, task_ev, autocast)
        out.rows[r.task.name], out.scored[r.task.name] = scored.row, scored
        metric, _ = primary(r.task.name, scored.row)
        key = next((k for k in scored.examples if k == metric or k.endswith("/" + metric)), next(iter(scored.examples), None))
        if key is not None:
            out.examples[r.task.name] = scored.examples[key]
    for spec in rset.harness:
        h = lmeval.score(model, tok, spec, ev.batch_size)
        out.rows[lmeval.row_name(spec.task)], out.examples[lmeval.row_name(spec.task)] = h.row, h.examples
    if rset.probe:
        sums, counts = scoring.example_nlls(model, rset.probe, tok.pad_token_id, ev.batch_size, autocast)
        per_token = len(sums) / max(sum(counts), 1)
        out.rows[PROBE] = {"nll": sum(sums) / max(sum(counts), 1)}
        out.examples[PROBE] = [x * per_token for x in sums]
    return out


def primary(name: str, scores: dict[str, Any]) -> tuple[str, float]:
    """(metric, value in points) of a task's score row: the task metric x 100, or the probe's NLL."""
    if name == PROBE or "nll" in scores:
        return "nll", float(scores["nll"])
    for k, v in scores.items():
        if k not in ("val_loss", "perplexity") and not k.startswith("n_"):
            if isinstance(v, dict):  # multi-valued metrics (code): the first value
                k, v = next(iter(v.items()))
            return k, 100.0 * float(v)
    return "val_loss", float(scores["val_loss"])


def forgetting(name: str, base: dict[str, Any], now: dict[str, Any]) -> float:
    """How much was lost, in points (positive = forgotten): score drop, or NLL rise x 100."""
    metric, b = primary(name, base)
    _, n = primary(name, now)
    return (n - b) * 100.0 if metric in ("nll", "val_loss") else b - n


def forgetting_interval(name: str, base: RetainedScores, now: RetainedScores) -> tuple[float, float] | None:
    """A paired bootstrap 95% interval of `forgetting` (points; the probe: NLL rise x 100) over the same
    examples, or None without per-example scores."""
    b, n = base.examples.get(name), now.examples.get(name)
    if not b or not n or len(b) != len(n):
        return None
    _, low, high = paired_bootstrap(b, n)  # of now - base, in the scores' units
    if primary(name, base.rows[name])[0] in ("nll", "val_loss"):
        return 100.0 * low, 100.0 * high
    return -100.0 * high, -100.0 * low


def retention_summary(base: RetainedScores, final: RetainedScores) -> dict[str, dict[str, Any]]:
    """summary.json `retention`: per retained task, its metric, base, final, delta (final - base) with
    its paired 95% interval `ci` (same units), n, and `forgotten`: the interval shows a significant loss."""
    out = {}
    for name, f in final.rows.items():
        if name not in base.rows:
            continue
        metric, b = primary(name, base.rows[name])
        _, v = primary(name, f)
        row: dict[str, Any] = {"metric": metric, "base": b, "final": v, "delta": v - b, "forgetting": forgetting(name, base.rows[name], f)}
        ci = forgetting_interval(name, base, final)
        if ci is not None:
            lo, hi = ci  # of forgetting; delta's interval is its mirror (NLL: its rise, in nats)
            row["n"] = len(final.examples[name])
            row["ci"] = [lo / 100.0, hi / 100.0] if metric == "nll" else [-hi, -lo]
            row["significant"] = lo > 0 or hi < 0
            row["forgotten"] = lo > 0
        out[name] = row
    return out


def breaches(base: RetainedScores, now: RetainedScores, threshold: float, test: str = "point") -> list[str]:
    """Retained tasks whose forgetting exceeds the threshold (points). test=point: the estimate does;
    significant: the whole paired 95% interval does (the lower bound of the loss is over it)."""
    out = []
    for name in now.rows:
        if name not in base.rows:
            continue
        ci = forgetting_interval(name, base, now) if test == "significant" else None
        lost = ci[0] if ci is not None else forgetting(name, base.rows[name], now.rows[name])
        if lost > threshold:
            out.append(name)
    return out


# ------------------------------------------------------------- a sequence of tasks


def sequence_metrics(R: list[list[float]], baseline: list[float] | None = None) -> dict[str, float | None]:
    """R[i][j]: score on task j after training stage i (T x T, points). Lopez-Paz & Ranzato 2017:
    ACC = mean_j R[T-1][j]
    BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])         negative = forgetting
    FWT = mean_{j>0} (R[j-1][j] - b_j)               b_j: the base model's score on task j
    """
    T = len(R)
    acc = sum(R[-1]) / T
    bwt = sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1) if T > 1 else None
    fwt = sum(R[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1) if T > 1 and baseline else None
    return {"average_accuracy": acc, "backward_transfer": bwt, "forward_transfer": fwt}


def plot_matrix(R: list[list[float]], tasks: list[str], out_png: Path, title: str = "score after each stage (points)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(tasks)
    fig, ax = plt.subplots(figsize=(1.4 * T + 2.5, 1.1 * T + 1.8), dpi=120)
    im = ax.imshow(R, cmap="viridis", aspect="auto")
    for i in range(len(R)):
        for j in range(T):
            ax.text(
                j, i, f"{R[i][j]:.1f}", ha="center", va="center", color="w" if R[i][j] < (max(map(max, R)) + min(map(min, R))) / 2 else "k"
            )
    ax.set_xticks(range(T), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(R)), [f"after {t}" for t in tasks[: len(R)]])
    ax.set_xlabel("evaluated task")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
