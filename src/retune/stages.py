"""The stages recipe: fine-tune on a sequence of tasks (task 1, then task 2, ...) in one run.

After each stage every task of the sequence is scored, which fills the accuracy matrix R[i][j]
(score on task j after stage i, in points); from it average accuracy, backward transfer (BWT,
negative = forgetting) and forward transfer (FWT). Retention methods carry across stages: EWC and
SI consolidate on the stage just finished (online), L2-SP re-anchors, distillation adds the stage's
examples to its retention prompts, and replay keeps a buffer of every earlier stage's examples.

Run directory: config.yaml, metrics.jsonl, summary.json (with `stages`), stage-<i>/ (checkpoints
and the stage's trainable weights), matrix.png.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from retune.config import RetuneConfig, to_yaml
from retune.data.dataset import load_task_config
from retune.data.replay import ReplayBuffer, replay_mix
from retune.evaluate.forgetting import plot_matrix, primary, sequence_metrics
from retune.evaluate.report import LiveProgress, console
from retune.evaluate.task_eval import evaluate_task
from retune.io import append_jsonl, write_json, write_text
from retune.models import loss as loss_mod
from retune.models.load import count_params, load_base, load_tokenizer, prepare_for_training
from retune.models.resolve import resolve_base
from retune.retain import Retention, print_tradeoff
from retune.retention.common import RetentionContext
from retune.train.checkpoint import save_weights
from retune.train.loop import LoopIO, fit


def run_stages(cfg: RetuneConfig, new_run_dir: Any, make_accelerator: Any, save_model: Any, train_stats: Any) -> tuple[Path, dict]:
    from transformers import set_seed

    from retune.data.templates import Formatter

    t_start = time.perf_counter()
    set_seed(cfg.trainer.seed)
    model_path = resolve_base(cfg.model.base)
    tok = load_tokenizer(model_path, cfg.model)
    fmt = Formatter(tok, cfg.data)
    tasks = [load_task_config(s.task.model_copy(update={"name": s.task.name or s.name}), cfg.data, cfg.eval) for s in cfg.stages]
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        raise ValueError("stages: two stages train the same task name; name them (stages[i].name)")
    enc = lambda t, rows, where: [fmt.encode_record(t.template, r, f"{t.name} {where} record {i + 1}") for i, r in enumerate(rows)]  # noqa: E731
    train = [enc(t, t.train, "train") for t in tasks]
    val = [enc(t, t.validation, "validation") for t in tasks]
    retention = Retention.load(cfg, tok, fmt)
    full = cfg.adapter.type == "full"
    model = load_base(cfg, model_path, trainable_full=full)

    run_dir = new_run_dir(cfg)
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    console.print(f"run directory: {run_dir}")
    accelerator = make_accelerator(cfg, run_dir)
    autocast = accelerator.autocast
    metrics_path = run_dir / "metrics.jsonl"

    def log(row: dict) -> None:
        append_jsonl(metrics_path, {"time": round(time.time(), 3), **row})
        retention.observe(row)

    def score_all(stage: str) -> dict[str, dict]:
        out = {}
        for t, v in zip(tasks, val, strict=True):
            out[t.name] = evaluate_task(model, tok, fmt, t, v, cfg.eval, autocast)
            log({"event": "task_eval", "stage": stage, "task": t.name, "scores": out[t.name]})
        return out

    console.print(f"scoring the base model on {', '.join(names)}")
    base = score_all("base")
    retention.score_base(model, autocast)
    baseline = [primary(n, base[n])[1] for n in names]

    set_seed(cfg.trainer.seed)
    model = prepare_for_training(model, cfg, bf16_autocast=accelerator.mixed_precision == "bf16")
    loss_mod.USE_COMPILE = cfg.trainer.compile
    trainable, total = count_params(model)
    regs = retention.regularizers(model, tok.pad_token_id, autocast, log)
    rc = next((m for m in cfg.retention if m.method == "replay"), None)
    buffer = ReplayBuffer(rc.samples if rc else 0)
    if rc is not None:  # the retain: tasks' examples (or the base's own answers) start the buffer
        buffer.by_task["retain"] = retention.replay_buffer(model, autocast)

    R: list[list[float]] = []
    scores: list[dict] = []
    states = []
    for i, (stage, task) in enumerate(zip(cfg.stages, tasks, strict=True)):
        console.print(f"[bold]stage {i + 1}/{len(tasks)}: {task.name}")
        data = replay_mix(train[i], buffer.examples(), rc.share, cfg.trainer.seed + i) if rc and len(buffer) else train[i]
        over = {k: v for k, v in (("epochs", stage.epochs), ("max_steps", stage.max_steps), ("lr", stage.lr)) if v is not None}
        tcfg = cfg.trainer.model_copy(update=over)
        stage_dir = run_dir / f"stage-{i + 1}"
        io = LoopIO(ckpt_dir=stage_dir / "checkpoints", log=lambda row, i=i: log({"stage": i + 1, **row}), progress=LiveProgress(task.name))
        io.ckpt_dir.mkdir(parents=True)
        io.regularizers = regs
        states.append(fit(model, data, val[i], tcfg, tok.pad_token_id, accelerator, io))
        model = accelerator.unwrap_model(model)
        save_weights(stage_dir / "trainable.safetensors", model)  # each stage checkpointed
        row = score_all(f"after {task.name}")
        scores.append(row)
        R.append([primary(n, row[n])[1] for n in names])
        log({"event": "stage_done", "stage": i + 1, "task": task.name, "R_row": R[-1]})
        # carry the retention methods into the next stage (online EWC, SI, L2-SP, distillation, replay)
        ctx = RetentionContext(pad_id=tok.pad_token_id, autocast=autocast, anchor_data=train[i], log=log)
        for reg in regs:
            if hasattr(reg, "consolidate"):
                reg.consolidate(model, ctx, train[i])
            if hasattr(reg, "data"):
                reg.data = list(reg.data) + train[i][: getattr(reg, "samples", None) or 200]
        if rc is not None:
            buffer.add(task.name, train[i])

    seq = sequence_metrics(R, baseline)
    plot_matrix(R, names, run_dir / "matrix.png")
    final_ret = retention.score(model, autocast) if retention.rset else {}
    retained = retention.summary(final_ret) if final_ret else {}
    if cfg.output.save_model:
        save_model(model, tok, run_dir, full)
    tr = train_stats(states[-1], trainable, total, t_start)
    tr["tokens"] = sum(s.tokens for s in states)
    tr["train_seconds"] = sum(s.train_seconds for s in states)
    summary = {
        "status": "completed",
        "run_dir": str(run_dir),
        "task": ", ".join(names),
        "base": base,
        "final": scores[-1],
        "retention": retained,
        "stages": {"tasks": names, "R": R, "baseline": baseline, **seq, "matrix_png": "matrix.png"},
        "train": tr,
    }
    write_json(run_dir / "summary.json", summary)
    print_matrix(names, R, baseline, seq)
    if retained:
        print_tradeoff([names[-1]], base, scores[-1], retained)
    return run_dir, summary


def print_matrix(names: list[str], R: list[list[float]], baseline: list[float], seq: dict) -> None:
    from rich.table import Table

    table = Table(title="R[i][j]: score on task j after stage i (points)")
    table.add_column("after")
    for n in names:
        table.add_column(n, justify="right")
    table.add_row("base", *[f"{b:.1f}" for b in baseline])
    for n, row in zip(names, R, strict=True):
        table.add_row(n, *[f"{v:.1f}" for v in row])
    console.print(table)

    def sign(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    acc, bwt, fwt = seq["average_accuracy"], sign(seq["backward_transfer"]), sign(seq["forward_transfer"])
    console.print(f"average accuracy {acc:.2f}, backward transfer {bwt}, forward transfer {fwt}")
