"""A run's data, encoded for its model: every task's training and validation examples, and the mix.

The stage type (objectives/: sft, dpo, ...) encodes each record, through the model's task type
(models/tasks.py) for sft, so causal LMs, classifiers and seq2seq models go through the same path;
every example carries its task's loss weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retune.config import RetuneConfig, TaskConfig, TemplateConfig
from retune.data import mixing
from retune.data.dataset import TaskData, load_task_config
from retune.data.templates import Encoded, Formatter
from retune.evaluate.report import console
from retune.models.tasks import task_type
from retune.objectives import SFT, Objective, objective_for
from retune.objectives.kto import KTO_TEMPLATE
from retune.objectives.pairs import PAIR_TEMPLATE
from retune.types import Tokenizer


@dataclass
class Prepared:
    """Every task's encoded examples and the training mix. `epoch_examples(epoch)` draws each epoch
    afresh (what the loop consumes)."""

    cfg: RetuneConfig
    tok: Tokenizer
    fmt: Formatter
    tasks: list[TaskData]
    task_train: list[list[Encoded]]  # per task; empty for evaluation-only tasks
    task_val: list[list[Encoded]]  # per task: validation loss of each task
    mix: mixing.MixPlan  # counts over the trained tasks (those with training examples)
    objectives: list[Objective] = field(default_factory=list)  # per task: its stage type (evaluation-only: sft)

    @property
    def trained(self) -> list[int]:
        return [i for i, t in enumerate(self.task_train) if t]

    @property
    def val_by_task(self) -> dict[str, list[Encoded]]:
        """The loop's validation sets (trained tasks only): each task's loss is logged, and early
        stopping follows the pooled loss."""
        return {self.tasks[i].name: self.task_val[i] for i in self.trained}

    def epoch_examples(self, epoch: int) -> list[Encoded]:
        sets = [self.task_train[i] for i in self.trained]
        sizes = [len(x) for x in sets]
        if self.mix.counts == sizes:  # every example once: no draw needed (the loop shuffles)
            return [e for x in sets for e in x]
        return [sets[t][j] for t, j in mixing.epoch_indices(sizes, self.mix.counts, self.cfg.trainer.seed, epoch)]


def run_tasks(cfg: RetuneConfig) -> tuple[list[TaskConfig], list[Objective]]:
    """The tasks a run trains and scores, and each one's stage type: under `stages:` each stage's task
    (named after the stage) and type; else data.tasks (or the shorthand) under `objective:`, one instance
    for all (grpo keeps its prompts' lengths in it)."""
    if cfg.stages:
        tasks = [s.task.model_copy(update={"name": s.task.name or s.name}) for s in cfg.stages]
        return tasks, [objective_for(s) for s in cfg.stages]
    tasks = cfg.data.task_list()
    return tasks, [objective_for(cfg.objective)] * len(tasks)


def prepare_data(
    cfg: RetuneConfig, tok: Tokenizer, task_configs: list[TaskConfig] | None = None, objectives: list[Objective] | None = None
) -> Prepared:
    """Load and encode the run's tasks (run_tasks), or `task_configs`, each by its stage type
    (`objectives`, one per task; default: run_tasks' types, or the config's `objective:` for `task_configs`)."""
    configs, types = run_tasks(cfg) if task_configs is None else (task_configs, [objective_for(cfg.objective)] * len(task_configs))
    objectives = objectives or types
    objectives = [o if tc.train is not None else SFT for tc, o in zip(configs, objectives, strict=True)]  # evaluation-only: scored as usual
    tasks = [load_task_config(tc, cfg.data, cfg.eval, default_template(obj)) for tc, obj in zip(configs, objectives, strict=True)]
    task_type(cfg.model.task).check_tasks(tasks)
    fmt = Formatter(tok, cfg.data)
    task_train = [encode_task(cfg, fmt, t, t.train, f"{t.name} train", o) for t, o in zip(tasks, objectives, strict=True)]
    task_val = [encode_task(cfg, fmt, t, t.validation, f"{t.name} validation", o) for t, o in zip(tasks, objectives, strict=True)]
    if fmt.cut_responses:
        console.print(f"[yellow]warning: {fmt.cut_responses} responses were longer than data.max_length={cfg.data.max_length} and were cut")
    mix = plan_mix(cfg, tasks, task_train)
    for w in mix.warnings if task_configs is None else []:  # stages train one task at a time: no mix
        console.print(f"[yellow]warning: data mix: {w}")
    return Prepared(cfg, tok, fmt, tasks, task_train, task_val, mix, objectives)


def plan_mix(cfg: RetuneConfig, tasks: list[TaskData], task_train: list[list[Encoded]]) -> mixing.MixPlan:
    """The counts of each trained task in an epoch (planned again when a stage makes its own pairs)."""
    trained = [i for i, x in enumerate(task_train) if x]
    d = cfg.data
    names = [tasks[i].name for i in trained]
    sizes, weights = [len(task_train[i]) for i in trained], [tasks[i].weight for i in trained]
    return mixing.plan(sizes, d.mixing, weights, d.mixing_temperature, d.epoch_size, d.oversample, names)


def default_template(objective: Objective) -> TemplateConfig | None:
    """User data without a template: preference pairs in TRL's format read prompt -> chosen (the chosen
    answer is the reference when the task is scored); supervised data must say its template."""
    cfg = getattr(objective, "cfg", None)
    if objective.name == "kto":
        return KTO_TEMPLATE  # prompt -> completion
    return PAIR_TEMPLATE if getattr(cfg, "pairs", None) == "data" else None


def encode_task(
    cfg: RetuneConfig, fmt: Formatter, task: TaskData, records: list[dict], where: str, objective: Objective = SFT
) -> list[Encoded]:
    """Encode one task's records by its stage type and the model's task type; each example carries the
    task's loss weight."""
    return objective.encode_task(task_type(cfg.model.task), fmt, task, records, where, cfg.trainer.seed, cfg.eval.max_new_tokens)
