"""The session layer: what every recipe (fine-tune, stages, distill, ...) does the same way.

A Session holds one run: torch and process-group set-up, the run directory, the Accelerator, the
metrics sink and trackers, the retention policy, base and tuned scoring, the loop with its hooks,
saving the model and summary.json. A recipe is a short sequence over it:

    s = Session.begin(cfg)                 # threads, seed, process group, the base model's path
    prep = s.prepare()                     # data + retained sets: bad input fails here, before any folder
    model = s.load_model(labels)
    s.open_run()                           # run directory (rank 0 makes it), accelerator, trackers
    base = s.score_base(model)
    model = s.attach(model)                # adapter (or full fine-tuning)
    model, state = s.fit(model, train, val, ckpt_dir, regularizers)
    final = s.score(model, "tuned model", "tuned"); s.save_model(model); s.finish(summary)

It imports nothing above train/ (recipes and the CLI sit on top of it).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retune import allocator, environment
from retune.config import RetuneConfig, TaskConfig, TrainerConfig
from retune.data.packing import isolates
from retune.data.templates import Encoded
from retune.errors import UsageError
from retune.evaluate.forgetting import PROBE, RetainedScores
from retune.evaluate.report import LiveProgress, console, plot_loss
from retune.evaluate.task_eval import score_task, scoring_mode
from retune.io import append_jsonl, content_hash, read_jsonl, replace_dir, staging_dir
from retune.models import loss as loss_mod
from retune.models.load import compute_dtype, count_params, load_base, load_tokenizer, path_report, prepare_for_training
from retune.models.resolve import resolve_base
from retune.models.tasks import CAUSAL_LM, task_type_of
from retune.objectives import SFT, Objective
from retune.objectives.base import curves
from retune.retention import RetentionContext
from retune.retention.base import Regularizer
from retune.rundir import RunDir, check_output_dir
from retune.session import base_cache
from retune.session.known import KnownLosses
from retune.session.memory import PhasePeaks
from retune.session.prepare import Prepared, plan_mix, prepare_data
from retune.session.retain import Retention
from retune.session.uncertainty import write_scores
from retune.train import distributed as dist
from retune.train.checkpoint import LoopState, load_trainable, trainable_state
from retune.train.loop import Hooks, fit
from retune.types import Accelerator, Autocast, Model, Tokenizer

Scores = dict[str, dict[str, Any]]
EvalWatch = Callable[[int, float | None], None]  # (step, validation loss) at each evaluation; may raise to end the run


def setup_torch(cfg: RetuneConfig) -> None:
    threads = cfg.trainer.threads or max(1, len(os.sched_getaffinity(0)) // dist.local_world())  # processes share the cores
    torch.set_num_threads(threads)


def make_accelerator(cfg: RetuneConfig, run_dir: Path | None = None) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = "bf16" if compute_dtype(cfg.trainer.precision) == torch.bfloat16 else "no"
    log_with = None if cfg.trainer.logger == "none" else cfg.trainer.logger
    if log_with == "mlflow":
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise UsageError("trainer.logger=mlflow needs the mlflow package: pip install mlflow (or use tensorboard)")
    # Accelerate keeps its precision in a process-wide singleton; one process may build several
    # accelerators (train then eval, or many runs in a test session), each with its own precision.
    # The process-group half (PartialState) is kept, so this is safe under torchrun.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mp, log_with=log_with, project_dir=str(run_dir) if run_dir else None)
    dist.fsdp_on_cpu(accelerator)
    return accelerator


def tracker_config(d: object, prefix: str = "") -> dict[str, Any]:
    """The config as flat scalar hyper-parameters (`trainer.lr`, `stages.0.task.train`): trackers take
    int, float, str and bool only."""
    if isinstance(d, dict | list):
        items = d.items() if isinstance(d, dict) else enumerate(d)
        return {k: v for key, value in items for k, v in tracker_config(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d if isinstance(d, int | float | str | bool) else str(d)}


def data_hash(task: Any) -> str:
    """A task's train, validation and test records as the run read them."""
    return content_hash([task.train, task.validation, task.test])


def phase(name: str | Callable[..., str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A Session method as a phase of the run: its peak memory goes to summary.json `train.phase_peaks_mb`
    (`name`: the phase, or a function of the method's arguments that names it)."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def inner(self: Session, *args: Any, **kwargs: Any) -> Any:
            with self.memory.phase(name if isinstance(name, str) else name(*args, **kwargs)):
                return method(self, *args, **kwargs)

        return inner

    return wrap


@dataclass
class Session:
    cfg: RetuneConfig
    model_path: str
    resumed: RunDir | None = None
    run: RunDir | None = None
    accelerator: Accelerator | None = None  # set by open_run(); `accel` once it is there
    prep: Prepared | None = None
    policy: Retention | None = None  # set by prepare(): the retain: sets are loaded with the data
    watch: EvalWatch | None = None  # a search's pruner (recipes/tune.py) hears each evaluation
    t_start: float = field(default_factory=time.perf_counter)
    memory: PhasePeaks = field(default_factory=PhasePeaks)  # each phase's peak RSS
    plan: dict[str, Any] | None = None  # the planner's prediction (summary.json `plan`), set by the recipe
    labels: list[str] | None = None  # a seq_cls head's classes, as load_model had them
    known: KnownLosses = field(default_factory=KnownLosses)  # the last evaluation's validation losses, with its weights
    last_val_row: dict[str, Any] | None = None  # the loop's latest validation row

    # ---------------------------------------------------------------- set-up

    @classmethod
    def begin(cls, cfg: RetuneConfig, resumed: RunDir | None = None, watch: EvalWatch | None = None) -> Session:
        """Join the process group (under torchrun), set threads and seed, resolve the base model
        (rank 0 fills the caches first). Nothing is written yet. `watch` hears every evaluation."""
        from transformers import set_seed

        check_output_dir(cfg)
        dist.check_fsdp(cfg)
        dist.init()
        setup_torch(cfg)
        set_seed(cfg.trainer.seed)
        return cls(cfg, dist.main_first(lambda: resolve_base(cfg.model.base)), resumed, watch=watch)

    @phase("data")
    def prepare(self, task_configs: list[TaskConfig] | None = None, objectives: list[Objective] | None = None) -> Prepared:
        """Tokenizer, tasks and retained sets: every bad input in data or templates fails here,
        before the run directory exists, so a rejected config leaves nothing behind. Each task is
        encoded by its stage type (`objectives`; default: the config's `objective:`)."""
        tok = load_tokenizer(self.model_path, self.cfg.model)
        self.prep = dist.main_first(lambda: prepare_data(self.cfg, tok, task_configs, objectives))
        self.policy = Retention.load(self.cfg, tok, self.prep.fmt)
        return self.prep

    @phase("load")
    def load_model(self, labels: list[str] | None = None) -> Model:
        self.labels = labels
        return load_base(self.cfg, self.model_path, trainable_full=self.full, labels=labels)

    @property
    def full(self) -> bool:
        return self.cfg.adapter.type == "full"

    def open_run(self) -> RunDir:
        """The run directory (rank 0 creates it, every rank agrees on it), the Accelerator, trackers."""
        self.run = self.resumed or dist.agree(lambda: RunDir.create(self.cfg))
        console.print(f"run directory: {self.run.path}")
        if self.plan is not None and dist.is_main():
            peak, phase = self.plan["predicted_mb"], self.plan["phase"]
            console.print(f"memory plan: peak {peak:,.0f} MB predicted, while {phase} (retune plan: the parts)")
        self.accelerator = make_accelerator(self.cfg, self.run.path)
        if self.cfg.trainer.logger != "none":
            self.accelerator.init_trackers(self.run.path.name, config=tracker_config(self.cfg.model_dump(mode="json")))
        return self.run

    @property
    def accel(self) -> Accelerator:
        assert self.accelerator is not None, "open_run() first"
        return self.accelerator

    @property
    def autocast(self) -> Autocast:
        return self.accel.autocast

    @property
    def retention(self) -> Retention:
        assert self.policy is not None, "prepare() first"
        return self.policy

    @property
    def tok(self) -> Tokenizer:
        assert self.prep is not None, "prepare() first"
        return self.prep.tok

    # ---------------------------------------------------------------- metrics

    def log(self, row: dict) -> None:
        """One metrics row: metrics.jsonl (rank 0), the retention watcher, and the trackers."""
        if not dist.is_main() or self.run is None:
            return
        append_jsonl(self.run.metrics_path, {"time": round(time.time(), 3), **row})
        if "val_loss" in row and "step" in row:
            self.last_val_row = row
        if self.policy is not None:
            self.policy.observe(row)
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.cfg.trainer.logger != "none" and numeric:
            self.accel.log(numeric, step=row.get("step"))

    # ---------------------------------------------------------------- scoring

    @phase(lambda model, stage, key: f"{key if key in ('base', 'tuned') else 'stage'}_eval")
    def score(self, model: Model, stage: str, key: str) -> Scores:
        """{task: {metric: value, val_loss, ...}} for every task (rank 0 scores; the others get {}); each
        test example's score goes to scores/<task>-<key>.jsonl."""
        prep = self.prep
        assert prep is not None
        if not dist.is_main():
            return {}
        out = {}
        known = self.known.of(model)  # what the loop's last evaluation already measured on these weights
        for task, val in zip(prep.tasks, prep.task_val, strict=True):
            mode = scoring_mode(task, self.cfg.eval, model)
            console.print(f"scoring the {stage} on {task.name} ({len(task.test)} test examples, {task.metric}, {mode} scoring)")
            t0 = time.perf_counter()
            scored = score_task(model, prep.tok, prep.fmt, task, val, self.cfg.eval, self.autocast, known.get(task.name))
            out[task.name] = scored.row
            if self.run is not None:
                write_scores(self.run, key, task.name, scored)
            self.log(
                {
                    "event": "task_eval",
                    "stage": stage,
                    "task": task.name,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "scores": out[task.name],
                }
            )
        return out

    def score_base(self, model: Model) -> Scores:
        """The base model on every task and on what it must retain, before any adapter is attached
        (prefix/prompt tuning are not identity at init). Kept in the run directory, so a resumed run
        does not score it again."""
        assert self.run is not None
        fresh = not any((self.run.path / f).exists() for f in base_cache.FILES)  # not a resumed run's
        key = self.base_key() if fresh and self.cfg.eval.base_cache and dist.is_main() else None
        if key is not None and base_cache.restore(self.run, key):
            console.print("base model's scores: from an earlier run with the same inputs (eval.base_cache; false scores again)")
            self.log({"event": "base_cache", "key": key})
        base = self.run.read_json("base_scores.json")
        if base is None and self.cfg.eval.before and dist.is_main():  # the other processes wait at the barrier
            base = self.score(model, "base model", "base")
            self.run.write_json("base_scores.json", base)
        retained = self.run.read_json("base_retention.json")
        if retained is not None:
            self.retention.base = RetainedScores.from_json(retained)
        elif self.retention.rset and dist.is_main():
            with self.memory.phase("retain_base"):
                scored = self.retention.score_base(model, self.autocast)
            self.write_retained(scored, "base")
            self.run.write_json("base_retention.json", scored.to_json())
        if key is not None:
            base_cache.store(self.run, key)
        dist.barrier()
        if self.retention.rset and not dist.is_main() and (saved := self.run.read_json("base_retention.json")) is not None:
            self.retention.base = RetainedScores.from_json(saved)  # under FSDP every rank runs the retention gate
        return base or {}

    def base_key(self) -> str:
        """base_cache's key for this run: the data as encoded (test records, validation examples, the
        retained sets) on top of the config and the environment."""
        prep = self.prep
        assert prep is not None
        inputs = {
            "tasks": [data_hash(t) for t in prep.tasks],
            "val": content_hash([[(e.input_ids, e.labels, e.weight) for e in v] for v in prep.task_val]),
            "retained": self.retained_data(),
        }
        return base_cache.key(self.cfg, self.model_path, inputs)

    @phase("retain_tuned")
    def score_retained(self, model: Model, key: str = "tuned") -> Scores:
        """summary.json `retention`: each retained task's base, final and change with its paired
        interval (rank 0); per-example scores go to scores/<task>-<key>.jsonl."""
        if not (self.retention.rset and dist.is_main()):
            return {}
        now = self.retention.score(model, self.autocast)
        self.write_retained(now, key)
        return self.retention.summary(now)

    def write_retained(self, scored: RetainedScores, key: str) -> None:
        if self.run is not None:
            for name, task_scores in scored.scored.items():
                write_scores(self.run, key, name, task_scores)

    def retained_data(self) -> dict[str, str]:
        """summary.json `retention_data`: a content hash of each retained task's records and of the
        probe's token ids, so two runs' forgetting numbers can be checked to rest on the same data."""
        rset = self.retention.rset
        out = {r.task.name: data_hash(r.task) for r in rset.tasks}
        if rset.probe:
            out[PROBE] = content_hash([e.input_ids for e in rset.probe])
        return out

    # ---------------------------------------------------------------- training

    @phase("attach")
    def attach(self, model: Model) -> Model:
        """The adapter (or full fine-tuning), seeded the same whether or not the base was scored."""
        from transformers import set_seed

        set_seed(self.cfg.trainer.seed)
        model = prepare_for_training(model, self.cfg, bf16_autocast=self.accel.mixed_precision == "bf16")
        loss_mod.USE_COMPILE = self.cfg.trainer.compile
        trainable, total = count_params(model)
        console.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
        console.print(f"fast paths: {path_report(model)}")
        return model

    @phase("retention_setup")
    def regularizers(self, model: Model) -> list[Regularizer]:
        """The retention penalties, built after the adapter is attached (the trainable set is known)."""
        return self.retention.regularizers(model, self.tok.pad_token_id, self.autocast, self.log)

    @phase("reference")
    def reference(self, model: Model, objective: Objective, *example_sets: list[Encoded]) -> None:
        """What a stage type needs from the model as the stage starts (dpo: the reference
        log-probabilities of every training and validation pair; every rank computes the same)."""
        batch = self.cfg.eval.batch_size
        for examples in example_sets:
            objective.prepare(model, examples, self.tok.pad_token_id, batch, self.autocast)
        if self.prep is not None:  # pairs made by the model change the training sets' sizes
            self.prep.mix = plan_mix(self.cfg, self.prep.tasks, self.prep.task_train)

    @phase("preference_eval")
    def preference_scores(self, model: Model, objective: Objective, val: list[Encoded], stage: int | None = None) -> dict[str, Any]:
        """summary.json `preference`: the stage type's own scores of the validation set and its curves ({} for sft)."""
        scores = objective.summary(model, val, self.tok.pad_token_id, self.cfg.eval.batch_size, self.autocast)
        if scores and self.run is not None and self.run.metrics_path.exists():
            rows = read_jsonl(self.run.metrics_path, torn_tail=True)
            scores["curves"] = curves(rows, objective.metric_names, stage)
        return scores

    def retention_context(self, anchor: list[Encoded]) -> RetentionContext:
        return RetentionContext(pad_id=self.tok.pad_token_id, autocast=self.autocast, anchor_data=anchor, log=self.log)

    @phase("train")
    def fit(
        self,
        model: Model,
        train: list[Encoded] | Callable[[int], list[Encoded]],
        val: list[Encoded] | dict[str, list[Encoded]],
        ckpt_dir: Path,
        regularizers: list[Regularizer],
        trainer: TrainerConfig | None = None,
        resume: bool = False,
        stage: int | None = None,
        label: str = "training",
        objective: Objective = SFT,
    ) -> tuple[Model, LoopState]:
        """Train with the session's hooks (metrics, progress, the retention gate at each evaluation),
        then end on the weights the config selects (best validation loss, or the best within
        max_forgetting); every rank ends with the same weights."""
        tcfg = trainer or self.cfg.trainer
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        log = self.log if stage is None else (lambda row: self.log({"stage": stage, **row}))
        progress = LiveProgress(label) if dist.is_main() else None
        hooks = Hooks(log=log)
        if progress is not None:
            hooks.on_start = lambda total, done: progress.start(total=total, done=done)
            hooks.on_step = lambda state, result: progress.update(step=state.step, loss=result.loss)
            hooks.on_end = progress.stop
        if tcfg.eval_every:
            # the tuned model's scoring reuses the last evaluation's loss (an sft loss is the scoring's
            # token NLL; a preference objective's loss is not); a sharded model is gathered into a copy
            names = list(val) if isinstance(val, dict) and objective.name == "sft" and not dist.params_sharded(self.accel) else []
            hooks.on_eval = self._eval_hook(ckpt_dir, log, names)
        pack_to = self.packing_width(model, objective, log)
        state = fit(
            model,
            train,
            val,
            tcfg,
            self.tok.pad_token_id,
            self.accel,
            ckpt_dir,
            regularizers,
            hooks,
            resume=resume,
            objective=objective,
            pack_to=pack_to,
        )
        model = self.accel.unwrap_model(model)
        chosen = dist.broadcast_object(self.retention.restore_path(ckpt_dir, log) if dist.is_main() else None)
        if chosen is not None:
            from safetensors.torch import load_file

            load_trainable(model, load_file(str(chosen)))
        return self.gathered(model), state

    def gathered(self, model: Model) -> Model:
        """Under FSDP: the trained weights gathered whole (every rank takes part) into a plain copy of the
        model on rank 0, which scores and saves it as after a single-process run; the other ranks keep
        their shards. Otherwise the model itself."""
        if not dist.params_sharded(self.accel):
            return model
        weights = trainable_state(model)  # a collective: rank 0 gets them whole, the others nothing
        if not dist.is_main():
            return model
        plain = prepare_for_training(self.load_model(self.labels), self.cfg, bf16_autocast=self.accel.mixed_precision == "bf16")
        load_trainable(plain, weights)
        return plain

    def packing_width(self, model: Model, objective: Objective, log: Callable[[dict], None]) -> int | None:
        """data.packing for one fit: the packed rows' width (data.max_length), or None for padded
        micro-batches where packing would not be exact (data/packing.py); said once in metrics.jsonl."""
        mode = self.cfg.data.packing
        if mode is False:
            return None
        why = None
        if objective.name != "sft" or task_type_of(model) is not CAUSAL_LM or loss_mod.is_prompt_learning(model):
            why = "not a supervised stage of a causal LM"  # data.packing: true was refused at validation
        elif dist.params_sharded(self.accel):
            why = "FSDP / ZeRO-3 run the same number of forwards on every process; packed shares differ"
        elif not isolates(model, self.autocast):
            why = f"{type(loss_mod.unwrap(model)).__name__}'s forward does not keep packed examples apart"
        if why is None:
            log({"event": "packing", "width": self.cfg.data.max_length})
            return self.cfg.data.max_length
        log({"event": "packing", "width": None, "off": why})
        if mode is True and dist.is_main():
            console.print(f"[yellow]warning: data.packing: off ({why}); training on padded micro-batches")
        return None

    def _eval_hook(self, ckpt_dir: Path, log: Callable[[dict], None], tasks: list[str]) -> Callable[[Model, LoopState], bool]:
        """The retention gate, then the watcher (which hears the validation loss just logged); the
        validation losses of `tasks` are remembered with the weights they were measured on."""
        gate = self.retention.eval_hook(ckpt_dir, self.autocast, log)

        def hook(model: Model, state: LoopState) -> bool:
            if tasks and self.last_val_row is not None and self.last_val_row.get("step") == state.step:
                self.known.remember(model, self.last_val_row, tasks)
            with self.memory.phase("train_eval"):
                stop = gate(model, state)
            if self.watch is not None:
                self.watch(state.step, self.retention.last_val)
            return stop

        return hook

    # ---------------------------------------------------------------- results

    @phase("save")
    def save_model(self, model: Model) -> None:
        """adapter/ (peft format) or model/ (HF format, fp32 master weights), plus tokenizer/, atomically."""
        assert self.run is not None
        if not (self.cfg.output.save_model and dist.is_main()):
            return
        name = "model" if self.full else "adapter"
        tmp = staging_dir(self.run.path / name)
        model.save_pretrained(str(tmp), safe_serialization=True)
        if self.full:
            self.tok.save_pretrained(tmp)  # a full model folder loads with plain transformers on its own
        replace_dir(tmp, self.run.path / name)
        tmp = staging_dir(self.run.path / "tokenizer")
        self.tok.save_pretrained(tmp)
        replace_dir(tmp, self.run.path / "tokenizer")

    def train_stats(self, states: list[LoopState], model: Model) -> dict[str, Any]:
        trainable, total = count_params(model)
        last = states[-1]
        tokens, seconds = sum(s.tokens for s in states), sum(s.train_seconds for s in states)
        return {
            "steps": sum(s.step for s in states),
            "epochs_started": last.epoch + (1 if last.batch_in_epoch else 0),
            "tokens": tokens,
            "tokens_per_second": tokens / max(seconds, 1e-9),
            "train_seconds": seconds,
            "wall_seconds": time.perf_counter() - self.t_start,
            "peak_memory_mb": self.memory.peak_mb(),  # whole process (VmHWM); by phase below
            "phase_peaks_mb": self.memory.rounded(),
            "phase_seconds": {k: round(v, 1) for k, v in self.memory.seconds.items()},  # nested phases count in their parent
            "allocator": allocator.active(),
            "engine": dist.engine(self.accel),
            "trainable_params": trainable,
            "total_params": total,
            "best_step": last.best_step,
            "best_val_loss": last.best_val,
            "stopped_early": last.stopped_early,
        }

    def task_info(self, model: Model) -> dict[str, dict[str, Any]]:
        """Per task: metric, scoring, sizes, and its declared share of the mix (None: evaluation only)."""
        prep = self.prep
        assert prep is not None
        share = dict(zip(prep.trained, prep.mix.shares, strict=True))
        count = dict(zip(prep.trained, prep.mix.counts, strict=True))
        return {
            t.name: {
                "metric": t.metric,
                "scoring": scoring_mode(t, self.cfg.eval, model),
                "train_examples": len(prep.task_train[i]),
                "per_epoch": count.get(i, 0),
                "share": share.get(i),
                "loss_weight": t.loss_weight,
                "n_test": len(t.test),
                "data_sha256": data_hash(t),
            }
            for i, t in enumerate(prep.tasks)
        }

    def write_summary(self, summary: dict[str, Any]) -> None:
        assert self.run is not None
        if dist.is_main():
            self.run.write_json("summary.json", summary)

    def finish(self, summary: dict[str, Any]) -> None:
        """summary.json (with where it ran), loss.png, report.html, trackers closed."""
        assert self.run is not None
        summary["environment"] = environment.describe()
        if self.plan is not None:
            summary["plan"] = self.plan
        if dist.is_main():
            planned = f" (plan: {self.plan['predicted_mb']:,.0f} MB)" if self.plan else ""
            console.print(f"peak memory: {self.memory.peak_mb():,.0f} MB measured{planned}; by phase in summary.json train.phase_peaks_mb")
        self.write_summary(summary)
        if dist.is_main() and self.run.metrics_path.exists():
            plot_loss(self.run.metrics_path, self.run.path / "loss.png")
        if dist.is_main():
            from retune.report.build import write_run_report  # plotly is imported only where a report is written

            try:
                console.print(f"report: {write_run_report(self.run.path)}")
            except Exception as e:  # the run's results are saved; a report can be built again from them
                console.print(f"[yellow]report.html not written ({type(e).__name__}: {e}); retry with: retune report {self.run.path}")
        if self.cfg.trainer.logger != "none":
            self.accel.end_training()


def load_run(run: RunDir | str | Path, overrides: list[str] | None = None) -> tuple[RetuneConfig, Model, Tokenizer]:
    """(config, tuned model, tokenizer) of a finished run directory."""
    from retune.models.load import load_trained

    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg = run.config(overrides)
    setup_torch(cfg)
    model = load_trained(run.path, cfg)
    tok_dir = run.path / "tokenizer" if (run.path / "tokenizer").exists() else resolve_base(cfg.model.base)
    return cfg, model, load_tokenizer(str(tok_dir), cfg.model)
