"""The train recipe: base score -> fine-tune -> tuned score -> save, all into one run directory.

Run directory (DESIGN.md contract): config.yaml, metrics.jsonl, summary.json, adapter/ or model/,
tokenizer/, loss.png, checkpoints/.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from retune import allocator
from retune.config import RetuneConfig, load_config, to_yaml
from retune.data import mixing
from retune.data.dataset import TaskData, encode_records, load_tasks
from retune.data.templates import Encoded, Formatter
from retune.errors import UsageError
from retune.evaluate.report import LiveProgress, console, plot_loss, print_scores
from retune.evaluate.task_eval import evaluate_task, scoring_mode
from retune.io import append_jsonl, replace_dir, staging_dir, write_json, write_text
from retune.models import loss as loss_mod
from retune.models.load import (
    compute_dtype,
    count_params,
    load_base,
    load_tokenizer,
    prepare_for_training,
)
from retune.models.resolve import resolve_base
from retune.retain import Retention, print_tradeoff
from retune.train import distributed as dist
from retune.train.checkpoint import LoopState
from retune.train.loop import LoopIO, fit


@dataclass
class Prepared:
    """Every task's encoded examples and the training mix. `train` is epoch 0's mixed examples;
    `epoch_examples(epoch)` draws each epoch afresh (what the loop consumes)."""

    cfg: RetuneConfig
    tok: Any
    fmt: Formatter
    tasks: list[TaskData]
    task_train: list[list[Encoded]]  # per task; empty for evaluation-only tasks
    task_val: list[list[Encoded]]  # per task: validation loss of each task
    mix: mixing.MixPlan  # counts over the trained tasks (those with training examples)

    @property
    def task(self) -> TaskData:  # the first task (single-task callers)
        return self.tasks[0]

    @property
    def trained(self) -> list[int]:
        return [i for i, t in enumerate(self.task_train) if t]

    @property
    def val_by_task(self) -> dict[str, list[Encoded]]:
        """The loop's validation sets (trained tasks only): each task's loss is logged, and early
        stopping follows the pooled loss."""
        return {self.tasks[i].name: self.task_val[i] for i in self.trained}

    @property
    def train(self) -> list[Encoded]:
        return self.epoch_examples(0)

    def epoch_examples(self, epoch: int) -> list[Encoded]:
        sets = [self.task_train[i] for i in self.trained]
        sizes = [len(x) for x in sets]
        if self.mix.counts == sizes:  # every example once: no draw needed (the loop shuffles)
            return [e for x in sets for e in x]
        return [sets[t][j] for t, j in mixing.epoch_indices(sizes, self.mix.counts, self.cfg.trainer.seed, epoch)]


def setup_torch(cfg: RetuneConfig) -> None:
    threads = cfg.trainer.threads or max(1, len(os.sched_getaffinity(0)) // dist.local_world())  # processes share the cores
    torch.set_num_threads(threads)


def make_accelerator(cfg: RetuneConfig, run_dir: Path | None = None) -> Any:
    from accelerate import Accelerator

    mp = "bf16" if compute_dtype(cfg.trainer.precision) == torch.bfloat16 else "no"
    log_with = None if cfg.trainer.logger == "none" else cfg.trainer.logger
    if log_with == "mlflow":
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise UsageError("trainer.logger=mlflow needs the mlflow package: pip install mlflow (or use tensorboard)")
    # Accelerate keeps its precision in a process-wide singleton; one process may build several
    # accelerators (train then eval, or many runs in a test session), each with its own precision.
    # The process-group half (PartialState) is kept, so this is safe under torchrun.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mp, log_with=log_with, project_dir=str(run_dir) if run_dir else None)


def prepare_data(cfg: RetuneConfig, model_path: str | None = None, tok: Any = None) -> Prepared:
    tok = tok if tok is not None else load_tokenizer(model_path or resolve_base(cfg.model.base), cfg.model)
    tasks = load_tasks(cfg.data, cfg.eval)
    if cfg.model.task == "seq_cls" and len({tuple(t.labels or ()) for t in tasks}) != 1:
        raise UsageError("model.task=seq_cls has one classification head: every task needs the same labels (data.tasks[i].labels)")
    fmt = Formatter(tok, cfg.data)
    task_train = [encode_task(cfg, fmt, t, t.train, f"{t.name} train") for t in tasks]
    task_val = [encode_task(cfg, fmt, t, t.validation, f"{t.name} validation") for t in tasks]
    if fmt.cut_responses:
        console.print(f"[yellow]warning: {fmt.cut_responses} responses were longer than data.max_length={cfg.data.max_length} and were cut")
    trained = [i for i, x in enumerate(task_train) if x]
    d = cfg.data
    mix = mixing.plan(
        [len(task_train[i]) for i in trained],
        d.mixing,
        [tasks[i].weight for i in trained],
        d.mixing_temperature,
        d.epoch_size,
        d.oversample,
        [tasks[i].name for i in trained],
    )
    for w in mix.warnings:
        console.print(f"[yellow]warning: data mix: {w}")
    return Prepared(cfg, tok, fmt, tasks, task_train, task_val, mix)


def encode_task(cfg: RetuneConfig, fmt: Formatter, task: TaskData, records: list[dict], where: str) -> list[Encoded]:
    """Encode one task's records for the model's task type; each example carries the task's loss weight."""
    if cfg.model.task == "causal_lm":
        out = encode_records(fmt, task.template, records, where)
    else:
        from retune.models import tasks as model_tasks

        kind = cfg.model.task
        out = [model_tasks.encode(kind, fmt, task.template, r, task.labels, f"{where} record {i + 1}") for i, r in enumerate(records)]
    for e in out:
        e.weight = task.loss_weight
    return out


def evaluate_tasks(model: Any, prep: Prepared, autocast: Any, log: Any = None, stage: str = "") -> dict[str, dict[str, float]]:
    """{task: {metric: value, val_loss, ...}} for every task, base or tuned; logged per task when `log` is given."""
    out = {}
    for task, val in zip(prep.tasks, prep.task_val, strict=True):
        mode = scoring_mode(task, prep.cfg.eval, model)
        console.print(f"scoring the {stage or 'model'} on {task.name} ({len(task.test)} test examples, {task.metric}, {mode} scoring)")
        t0 = time.perf_counter()
        out[task.name] = evaluate_task(model, prep.tok, prep.fmt, task, val, prep.cfg.eval, autocast)
        if log is not None:
            seconds = round(time.perf_counter() - t0, 1)
            log({"event": "task_eval", "stage": stage, "task": task.name, "seconds": seconds, "scores": out[task.name]})
    return out


def new_run_dir(cfg: RetuneConfig) -> Path:
    # the `--nproc` launcher names it up front, so that it can point at it if a process fails
    run_dir = Path(os.environ["RETUNE_RUN_DIR"]) if os.environ.get("RETUNE_RUN_DIR") else plan_run_dir(cfg)
    run_dir.mkdir(parents=True)
    return run_dir


def plan_run_dir(cfg: RetuneConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output.dir) / f"{cfg.output.name or 'run'}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(cfg.output.dir) / f"{cfg.output.name or 'run'}-{stamp}-{n}"
    return run_dir


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(config_path: str | None, overrides: list[str] | None = None, resume: str | None = None) -> tuple[Path, dict]:
    t_start = time.perf_counter()
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise UsageError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        if config_path is None:
            raise UsageError("give a config file (retune train CONFIG) or --resume RUN_DIR")
        cfg = load_config(config_path, overrides)
        run_dir = None
    if cfg.stages:  # a sequence of tasks: its own recipe (retune/stages.py)
        if resume:
            raise UsageError("--resume does not cover stages: yet; each stage's weights are in RUN/stage-<i>/")
        from retune.stages import run_stages

        setup_torch(cfg)
        return run_stages(cfg, new_run_dir, make_accelerator, save_model, train_stats)
    dist.init()  # launched as several processes (torchrun / accelerate launch): join the group
    setup_torch(cfg)

    from transformers import set_seed

    set_seed(cfg.trainer.seed)
    # Everything that can fail on bad input (model, data, template) is checked before the run
    # directory exists, so a rejected config leaves nothing behind.
    model_path = dist.main_first(lambda: resolve_base(cfg.model.base))  # rank 0 fills the caches first
    prep = dist.main_first(lambda: prepare_data(cfg, model_path))
    retention = Retention.load(cfg, prep.tok, prep.fmt)  # retain: tasks and probe (bad input fails here)
    full = cfg.adapter.type == "full"
    model = load_base(cfg, model_path, trainable_full=full, labels=prep.task.labels)
    if run_dir is None:
        run_dir = dist.agree(lambda: new_run_dir(cfg))  # rank 0 writes the run directory, for all ranks
        if dist.is_main():
            write_text(run_dir / "config.yaml", to_yaml(cfg))
    console.print(f"run directory: {run_dir}")
    accelerator = make_accelerator(cfg, run_dir)
    if cfg.trainer.logger != "none":
        accelerator.init_trackers(run_dir.name, config=cfg.model_dump(mode="json"))
    autocast = accelerator.autocast
    metrics_path = run_dir / "metrics.jsonl"

    def log(row: dict) -> None:
        if not dist.is_main():
            return
        append_jsonl(metrics_path, {"time": round(time.time(), 3), **row})
        retention.observe(row)
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if cfg.trainer.logger != "none" and numeric:
            accelerator.log(numeric, step=row.get("step"))

    # Score the base model before any adapter is attached (prefix/prompt tuning are not identity at init).
    base_file = run_dir / "base_scores.json"
    base_scores: dict[str, dict[str, float]] | None = None
    if base_file.exists():
        import json

        base_scores = json.loads(base_file.read_text())
    elif cfg.eval.before and dist.is_main():  # the other processes wait at the barrier below
        base_scores = evaluate_tasks(model, prep, autocast, log, stage="base model")
        write_json(base_file, base_scores)
    retention_file = run_dir / "base_retention.json"
    if retention_file.exists():  # resumed: the base was scored before the interruption
        import json

        retention.base = json.loads(retention_file.read_text())
    elif retention.rset and dist.is_main():
        write_json(retention_file, retention.score_base(model, autocast))
    dist.barrier()
    train_examples = retention.replay(model, prep.epoch_examples, autocast)  # replay is data: mixed in here

    set_seed(cfg.trainer.seed)  # adapter init does not depend on whether the base was scored
    model = prepare_for_training(model, cfg, bf16_autocast=accelerator.mixed_precision == "bf16")
    loss_mod.USE_COMPILE = cfg.trainer.compile
    trainable, total = count_params(model)
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    io = LoopIO(ckpt_dir=run_dir / "checkpoints", log=log, progress=LiveProgress() if dist.is_main() else None)
    io.ckpt_dir.mkdir(exist_ok=True)
    io.regularizers = retention.regularizers(model, prep.tok.pad_token_id, autocast, log)  # after the adapter: trainable set known
    if cfg.trainer.eval_every:
        io.on_eval = retention.eval_hook(io.ckpt_dir, autocast, log)
    names = [t.name for t in prep.tasks]
    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir),
        "task": ", ".join(names),
        "metric": prep.task.metric if len(names) == 1 else {t.name: t.metric for t in prep.tasks},
        "tasks": task_info(prep, model),
    }
    try:
        state = fit(model, train_examples, prep.val_by_task, cfg.trainer, prep.tok.pad_token_id, accelerator, io, resume=bool(resume))
    except KeyboardInterrupt:
        summary["status"] = f"interrupted; resume with: retune train --resume {run_dir}"
        if dist.is_main():
            write_json(run_dir / "summary.json", summary)
        raise
    model = accelerator.unwrap_model(model)
    if not dist.is_main():  # rank 0 holds the same weights: it scores, saves and summarises
        return run_dir, summary

    retention.restore(model, io.ckpt_dir, log)
    accelerator.free_memory()  # Accelerate holds the optimizer (AdamW states: 8 bytes per trainable weight)
    final = evaluate_tasks(model, prep, autocast, log, stage="tuned model")
    retained = retention.summary(retention.score(model, autocast)) if retention.rset else {}
    if cfg.output.save_model:
        save_model(model, prep.tok, run_dir, full)
    if metrics_path.exists():
        plot_loss(metrics_path, run_dir / "loss.png")
    summary.update(
        status="completed",
        scoring=_one_or_all({t.name: scoring_mode(t, cfg.eval, model) for t in prep.tasks}),
        base=base_scores or {},
        final=final,
        retention=retained,
        retention_history=retention.history,
        train=train_stats(state, trainable, total, t_start),
    )
    write_json(run_dir / "summary.json", summary)
    if cfg.trainer.logger != "none":
        accelerator.end_training()
    how = summary["scoring"] if isinstance(summary["scoring"], str) else "per-task"
    print_scores(f"{summary['task']}: base vs tuned ({how} scoring)", base_scores, final)
    if retained:
        print_tradeoff([prep.tasks[i].name for i in prep.trained], base_scores or {}, final, retained)
    return run_dir, summary


def _one_or_all(per_task: dict[str, str]) -> str | dict[str, str]:
    return next(iter(per_task.values())) if len(per_task) == 1 else per_task


def task_info(prep: Prepared, model: Any) -> dict[str, dict[str, Any]]:
    """Per task: metric, scoring, sizes, and its declared share of the mix (None: evaluation only)."""
    share = dict(zip(prep.trained, prep.mix.shares, strict=True))
    count = dict(zip(prep.trained, prep.mix.counts, strict=True))
    return {
        t.name: {
            "metric": t.metric,
            "scoring": scoring_mode(t, prep.cfg.eval, model),
            "train_examples": len(prep.task_train[i]),
            "per_epoch": count.get(i, 0),
            "share": share.get(i),
            "loss_weight": t.loss_weight,
            "n_test": len(t.test),
        }
        for i, t in enumerate(prep.tasks)
    }


def train_stats(state: LoopState, trainable: int, total: int, t_start: float) -> dict[str, Any]:
    return {
        "steps": state.step,
        "epochs_started": state.epoch + (1 if state.batch_in_epoch else 0),
        "tokens": state.tokens,
        "tokens_per_second": state.tokens / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "peak_memory_mb": peak_rss_mb(),
        "allocator": allocator.active(),
        "trainable_params": trainable,
        "total_params": total,
        "best_step": state.best_step,
        "best_val_loss": state.best_val,
        "stopped_early": state.stopped_early,
    }


def save_model(model: Any, tok: Any, run_dir: Path, full: bool) -> None:
    """adapter/ (peft format) or model/ (HF format, fp32 master weights), plus tokenizer/, atomically."""
    name = "model" if full else "adapter"
    tmp = staging_dir(run_dir / name)
    model.save_pretrained(tmp, safe_serialization=True)
    if full:
        tok.save_pretrained(tmp)  # a full model folder loads with plain transformers on its own
    replace_dir(tmp, run_dir / name)
    tmp = staging_dir(run_dir / "tokenizer")
    tok.save_pretrained(tmp)
    replace_dir(tmp, run_dir / "tokenizer")
