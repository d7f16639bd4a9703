"""Retention policy of a run: score what must be kept on the base model, attach the mitigations
(`retention:` penalties, replay data), watch forgetting at each evaluation, and report it.

Mechanism lives elsewhere: the penalties in retune.retention, the scores in evaluate.forgetting,
replay in data.replay. The session calls this; every recipe gets the same policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from retune.config import RetuneConfig
from retune.data.replay import replay_mix, self_replay
from retune.data.templates import Encoded, Formatter
from retune.evaluate.forgetting import RetainedScores, RetainSet, breaches, forgetting, load_retained, retention_summary, score_retained
from retune.evaluate.report import console
from retune.models.tasks import task_type
from retune.retention import RetentionContext, build, memory_report
from retune.retention.base import Regularizer
from retune.session.known import fingerprint
from retune.train.checkpoint import LoopState, save_weights
from retune.types import Autocast, Model, Tokenizer

TrainData: TypeAlias = list[Encoded] | Callable[[int], list[Encoded]]  # a list, or a function epoch -> that epoch's list
Log: TypeAlias = Callable[[dict], None]


@dataclass
class Retention:
    """The retention side of one run."""

    cfg: RetuneConfig
    tok: Tokenizer
    fmt: Formatter
    rset: RetainSet
    base: RetainedScores = field(default_factory=lambda: RetainedScores({}, {}, {}))
    history: list[dict] = field(default_factory=list)  # per evaluation: step, val_loss, forgetting per task
    best_ok: tuple[int, float] | None = None  # (step, val_loss) of the best evaluation within max_forgetting
    last_val: float | None = None  # the validation loss of the evaluation being watched
    breached: bool = False
    last: tuple[str, RetainedScores] | None = None  # the latest scores, with their weights' fingerprint

    @classmethod
    def load(cls, cfg: RetuneConfig, tok: Tokenizer, fmt: Formatter) -> Retention:
        retain = cfg.retain
        if not task_type(cfg.model.task).has_lm_head and "probe" not in retain.model_fields_set:
            retain = retain.model_copy(update={"probe": None})  # the NLL probe needs a language-model head
        return cls(cfg, tok, fmt, load_retained(retain, cfg.data, cfg.eval, tok, fmt))

    def score(self, model: Model, autocast: Autocast) -> RetainedScores:
        """The retained tasks and the probe on `model`; the same weights scored again (the tuned model
        after an evaluation at the last step) get the scores they got (session/known.py's fingerprint)."""
        if not self.rset:
            return RetainedScores({}, {}, {})
        weights = fingerprint(model)
        if self.last is not None and weights is not None and self.last[0] == weights:
            return self.last[1]
        scored = score_retained(model, self.tok, self.fmt, self.rset, self.cfg.eval, autocast)
        self.last = (weights, scored) if weights is not None else None
        return scored

    def score_base(self, model: Model, autocast: Autocast) -> RetainedScores:
        if self.rset:
            names = [r.task.name for r in self.rset.tasks] + (["general-text probe"] if self.rset.probe else [])
            console.print(f"scoring the base model on what it must retain: {', '.join(names)}")
        self.base = self.score(model, autocast)
        return self.base

    # ---------------------------------------------------------------- mitigations

    def anchor_data(self) -> list[Encoded]:
        """Examples of what must be kept before the first stage: the retained tasks' training examples,
        interleaved so that any prefix covers every task (later stages anchor through end_stage)."""
        per_task = []
        for r in self.rset.tasks:
            rows = r.task.train or r.task.validation
            per_task.append(
                [self.fmt.encode_record(r.task.template, x, f"retained {r.task.name} record {i + 1}") for i, x in enumerate(rows[:1000])]
            )
        out = []
        for i in range(max((len(p) for p in per_task), default=0)):
            out += [p[i] for p in per_task if i < len(p)]
        return out

    def replay_buffer(self, model: Model, autocast: Autocast) -> list[Encoded]:
        """The retained tasks' examples to replay (source: data), or the base model's own answers to
        their prompts (source: self); `samples` per task."""
        rc = next((m for m in self.cfg.retention if m.method == "replay"), None)
        if rc is None:
            return []
        buffer: list[Encoded] = []
        for r in self.rset.tasks:
            rows = (r.task.train or r.task.validation)[: rc.samples]
            if rc.source == "self":
                console.print(f"self-replay: generating the base model's answers to {len(rows)} {r.task.name} prompts")
                buffer += self_replay(model, self.fmt, r.task.template, rows, rc.max_new_tokens, self.cfg.eval.batch_size, autocast)
            else:
                buffer += [self.fmt.encode_record(r.task.template, x, f"replay {r.task.name} record {i + 1}") for i, x in enumerate(rows)]
        return buffer

    def replay(self, model: Model, train: TrainData, autocast: Autocast) -> TrainData:
        """The training set (a list, or a function epoch -> list) with replayed examples mixed in at
        the declared share; unchanged without a replay entry."""
        rc = next((m for m in self.cfg.retention if m.method == "replay"), None)
        if rc is None:
            return train
        buffer = self.replay_buffer(model, autocast)
        seed = self.cfg.trainer.seed
        mixed: TrainData
        if callable(train):  # a fresh draw of the buffer each epoch
            source = train
            n = len(source(0))

            def mixed(epoch: int) -> list[Encoded]:
                return replay_mix(source(epoch), buffer, rc.share, seed + epoch)

            total = len(mixed(0))
        else:
            mixed = replay_mix(train, buffer, rc.share, seed)
            n, total = len(train), len(mixed)
        console.print(f"replay: {total - n} of {total} training examples ({100 * (total - n) / max(total, 1):.1f}%) are replayed")
        return mixed

    def regularizers(self, model: Model, pad_id: int, autocast: Autocast, log: Log) -> list[Regularizer]:
        methods = [m for m in self.cfg.retention if m.method != "replay"]
        if not methods:
            return []
        mem = memory_report(methods, model)
        console.print("retention methods: " + ", ".join(f"{k} (+{v:.0f} MB)" for k, v in mem.items()))
        log({"event": "retention_memory_mb", **mem})
        ctx = RetentionContext(pad_id=pad_id, autocast=autocast, anchor_data=self.anchor_data(), log=log)
        return build(methods, model, ctx)

    # ---------------------------------------------------------------- watching

    def eval_hook(self, ckpt_dir: Path, autocast: Autocast, log: Log) -> Callable[[Model, LoopState], bool]:
        """Score retention at each evaluation; keep the best weights within trainer.max_forgetting;
        True (stop) on a breach."""
        threshold = self.cfg.trainer.max_forgetting
        self.best_ok, self.breached = None, False  # each fit (each stage) is watched on its own

        def hook(model: Model, state: LoopState) -> bool:
            if not self.rset:
                return False
            now = self.score(model, autocast)
            lost = {name: forgetting(name, self.base.rows[name], row) for name, row in now.rows.items() if name in self.base.rows}
            self.history.append({"step": state.step, "val_loss": self.last_val, "forgetting": lost})
            log({"step": state.step, **{f"forgetting/{k}": v for k, v in lost.items()}})
            if threshold is None:
                return False
            bad = breaches(self.base, now, threshold, self.cfg.trainer.forgetting_test)
            if not bad:
                val = self.last_val if self.last_val is not None else float("inf")
                if self.best_ok is None or val <= self.best_ok[1]:
                    self.best_ok = (state.step, val)
                    save_weights(ckpt_dir / "retained.safetensors", model)
                return False
            self.breached = True
            log({"event": "max_forgetting", "step": state.step, "tasks": bad})
            console.print(f"[yellow]step {state.step}: forgetting on {', '.join(bad)} exceeds trainer.max_forgetting={threshold}; stopping")
            return True

        return hook

    def restore_path(self, ckpt_dir: Path, log: Log) -> Path | None:
        """With max_forgetting: the best evaluated weights that kept every task within it, when the run
        must end on them (a breach, or select: retained); None: keep the weights as they are."""
        if self.cfg.trainer.max_forgetting is None or not (self.breached or self.cfg.trainer.select == "retained"):
            return None
        path = ckpt_dir / "retained.safetensors"
        if self.best_ok is None or not path.exists():
            console.print("[yellow]no evaluation stayed within trainer.max_forgetting; keeping the final weights")
            return None
        log({"event": "loaded_retained", "step": self.best_ok[0], "val_loss": self.best_ok[1]})
        return path

    def observe(self, row: dict) -> None:
        """Sees every logged row; remembers the latest validation loss (for selection)."""
        if "val_loss" in row:
            self.last_val = row["val_loss"]

    def summary(self, final: RetainedScores) -> dict[str, dict]:
        return retention_summary(self.base, final)


def print_tradeoff(tasks: list[str], base: dict, final: dict, retention: dict[str, dict]) -> None:
    """Gain on the new task(s) (every trained task of a multi-task run) next to forgetting on each retained task."""
    from rich.table import Table

    from retune.evaluate.forgetting import primary

    table = Table(title="gain on the new task vs forgetting on what it must retain (points; probe: NLL)")
    for col in ("task", "role", "metric", "base", "final", "change"):
        table.add_column(col, justify="left" if col in ("task", "role", "metric") else "right")
    for task in tasks:
        if task in base and task in final:
            m, b = primary(task, base[task])
            _, f = primary(task, final[task])
            table.add_row(task, "new", m, f"{b:.2f}", f"{f:.2f}", f"{f - b:+.2f}")
    for name, r in retention.items():
        fmt = ".4f" if r["metric"] == "nll" else ".2f"
        change = f"{r['delta']:+{fmt}}"
        if "ci" in r:  # the paired 95% interval; * when it excludes 0
            change += f" [{r['ci'][0]:+{fmt}}, {r['ci'][1]:+{fmt}}]{' *' if r['significant'] else ''}"
        table.add_row(name, "retained", r["metric"], f"{r['base']:{fmt}}", f"{r['final']:{fmt}}", change)
    console.print(table)
    if any("ci" in r for r in retention.values()):
        console.print("retained changes: paired bootstrap 95% interval over the same examples; * it excludes 0")
