"""RetuneConfig: a whole config file, and the checks that span sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator, model_validator

from retune.config.data import DataConfig
from retune.config.objective import ObjectiveConfig, SFTObjective, default_type
from retune.config.retention import RetainConfig, RetentionMethod, Stage
from retune.config.sections import PROMPT_LEARNING, AdapterConfig, EvalConfig, ModelConfig, OutputConfig, TrainerConfig, _Strict
from retune.config.tune import TuneConfig


class RetuneConfig(_Strict):
    """A whole config file. Every section is optional; an absent key takes its default."""

    model: ModelConfig = ModelConfig()
    """The base model to fine-tune."""
    adapter: AdapterConfig = AdapterConfig()
    """What is trained: full fine-tuning or an adapter (LoRA, QLoRA, DoRA, IA3, prefix/prompt tuning, any peft method)."""
    data: DataConfig = DataConfig()
    """The training data: one task (train, template, ...) or several (tasks), and how examples are encoded."""
    eval: EvalConfig = EvalConfig()
    """How tasks are scored before and after training."""
    trainer: TrainerConfig = TrainerConfig()
    """The optimisation: steps, batch, learning rate, evaluation, checkpoints, logging."""
    output: OutputConfig = OutputConfig()
    """Where the run directory is written."""
    retain: RetainConfig = RetainConfig()
    """Tasks and a probe that measure forgetting (summary.json `retention`: base, final, delta)."""
    retention: list[RetentionMethod] = []
    """Mitigations, combinable: [{method: ewc | si | l2sp | distill | replay, weight: ..., ...}]."""
    objective: ObjectiveConfig = SFTObjective()
    """What a one-stage run minimises: {type: sft} (supervised), a preference objective
    {type: dpo | orpo | simpo, ...} on (prompt, chosen, rejected) pairs, {type: kto} on labelled
    (prompt, completion) answers, or {type: grpo} on rewards of sampled answers. With stages: each
    stage's own `type` and keys say it instead."""
    stages: list[Stage] = []
    """Fine-tune on these tasks in order (data.* keys other than tasks apply to all); after each stage
    every task seen so far is scored: the accuracy matrix R, average accuracy, BWT and FWT. Each
    stage has a type (sft by default; dpo, orpo, simpo, kto, grpo) with its keys, as `objective:` has."""
    tune: TuneConfig = TuneConfig()
    """A search over this config's keys (`retune tune CONFIG`); `retune train` ignores it."""

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_type(cls, v: Any) -> Any:
        return default_type(v)

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_types(cls, v: Any) -> Any:
        return [default_type(s) for s in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> RetuneConfig:
        if self.trainer.max_forgetting is not None and not (self.retain.tasks or self.retain.probe):
            raise ValueError("trainer.max_forgetting needs retain: tasks (or a probe) to measure forgetting on")
        if self.trainer.select == "retained" and self.trainer.max_forgetting is None:
            raise ValueError("trainer.select=retained needs trainer.max_forgetting (the threshold)")
        names = [m.method for m in self.retention]
        if len(set(names)) < len(names):
            raise ValueError(f"retention: each method at most once (got {', '.join(names)})")
        if any(m.method == "replay" for m in self.retention) and not (self.retain.tasks or self.stages):
            raise ValueError("retention replay needs data to replay: retain: tasks, or stages:")
        if self.adapter.type in ("prefix_tuning", "prompt_tuning") and self.data.max_length + self.adapter.num_virtual_tokens > 8192:
            raise ValueError("data.max_length + adapter.num_virtual_tokens exceeds 8192 tokens")
        for i, t in enumerate(self.retain.tasks):
            t._where = f"retain.tasks[{i}]"
        self._check_stages()
        if self.stages and self.objective.type != "sft":
            raise ValueError("objective: applies to a one-stage run; with stages: give each stage its type (stages[i].type)")
        preference = [s.type for s in self.stages if s.type != "sft"] + ([self.objective.type] if self.objective.type != "sft" else [])
        if preference and "replay" in names:
            raise ValueError(f"retention replay mixes supervised examples into training; {preference[0]} trains on pairs: drop replay")
        self._check_tune()
        self._check_packing(preference)
        return self

    def _check_packing(self, preference: Sequence[str]) -> None:
        """data.packing: true where packing cannot be exact is refused, naming why (auto turns it off there)."""
        if self.data.packing is not True:
            return
        why = None
        if self.model.task != "causal_lm":
            why = f"model.task={self.model.task} has its own batch layout"
        elif self.adapter.type in PROMPT_LEARNING:
            why = f"adapter.type={self.adapter.type} prepends virtual tokens to every row"
        elif preference:
            why = f"a {preference[0]} stage batches (prompt, chosen, rejected) pairs"
        if why:
            raise ValueError(f"data.packing: true cannot be exact here: {why}; set data.packing: auto (or false)")

    def _check_tune(self) -> None:
        t = self.tune
        if not t.space:
            return
        if "worst_retained" in t.objectives or t.max_forgetting is not None:
            if not (self.retain.tasks or self.retain.probe):
                raise ValueError("tune: worst_retained and max_forgetting need retain: tasks (or a probe) to measure forgetting on")
        if t.prune and not self.trainer.eval_every:
            raise ValueError("tune.prune needs trainer.eval_every (the steps at which trials are compared); or tune.prune: false")

    def _check_stages(self) -> None:
        # A stage's task name is its own name, the stage's, or the train source's stem (a built-in's
        # name): all known here, so two stages that would log under one name fail before any data is read.
        seen: dict[str, int] = {}
        for i, s in enumerate(self.stages):
            s.task._where = f"stages[{i}].task"
            if s.task.train is None:
                raise ValueError(f"stages[{i}].task has no train source; every stage trains (give stages[{i}].task.train)")
            name = s.task.name or s.name or s.task.resolved_name()
            if name in seen:
                j = seen[name]
                raise ValueError(
                    f"stages[{j}] and stages[{i}] both train a task named '{name}'; give them distinct names (stages[{i}].name)"
                )
            seen[name] = i
