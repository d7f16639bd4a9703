"""Config of what the model must keep knowing (retain:), how to fight forgetting (retention:), and
sequences of fine-tuning stages (stages:)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from retune.config.data import TaskConfig
from retune.config.objective import DPOObjective, GRPOObjective, KTOObjective, ORPOObjective, SFTObjective, SimPOObjective
from retune.config.sections import TrainerConfig, _Strict


class EWCConfig(_Strict):
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017), online across stages."""

    method: Literal["ewc"]
    """Selects this method: ewc (Elastic Weight Consolidation)."""
    weight: float = Field(100.0, ge=0)
    """lambda of the penalty lambda/2 * sum F (theta - theta*)^2."""
    samples: int = Field(200, ge=1)
    """Samples of the old task (the previous stage, else the retain: tasks) for the diagonal Fisher."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Online EWC: the earlier stages' Fisher is multiplied by gamma before the new one is added."""
    normalize: bool = True
    """Divide F by its mean, so that weight reads like L2-SP's (importance-weighted) alpha whatever
    the model and loss scale; false: the paper's raw lambda."""


class SIConfig(_Strict):
    """Synaptic Intelligence (Zenke et al. 2017): path-integral importance."""

    method: Literal["si"]
    """Selects this method: si (Synaptic Intelligence)."""
    weight: float = Field(1.0, ge=0)
    """c of the penalty c * sum Omega (theta - theta*)^2."""
    damping: float = Field(1e-3, gt=0)
    """xi in Omega = omega / (delta^2 + xi)."""
    warmup_steps: int = Field(20, ge=0)
    """With no earlier stage: SGD steps on the retain: data whose path gives the importance (undone after)."""
    warmup_lr: float = Field(1e-4, gt=0)
    """Learning rate of those warm-up SGD steps."""
    normalize: bool = True
    """Divide Omega by its mean (weight then reads like L2-SP's alpha); false: the paper's raw c."""


class L2SPConfig(_Strict):
    """L2-SP (Li et al. 2018): a pull toward the starting weights."""

    method: Literal["l2sp"]
    """Selects this method: l2sp (L2-SP)."""
    weight: float = Field(0.01, ge=0)
    """alpha of alpha/2 * ||theta - theta_0||^2."""


class DistillConfig(_Strict):
    """KL to the base model's token distributions (under LoRA: the same model, adapters off)."""

    method: Literal["distill"]
    """Selects this method: distill (distillation from the base model)."""
    weight: float = Field(1.0, ge=0)
    """Multiplies the KL term added to the loss."""
    temperature: float = Field(2.0, gt=0)
    """Softens both distributions before the KL (Hinton et al. 2015); the term is scaled by T^2."""
    prompts: list[Literal["new", "retain"]] = ["retain"]
    """Where to distil. new: the training batches (every position); retain: a rotating batch of the
    retain: tasks' examples (their response positions). (Not `on`: YAML reads that key as true.)"""
    batch_size: int = Field(4, ge=1)
    """Retention examples distilled with each micro-batch."""
    samples: int | None = Field(None, ge=1)
    """Use only the first N retention examples."""


class ReplayConfig(_Strict):
    """Replay (data, not a penalty): earlier examples mixed into training at a declared share."""

    method: Literal["replay"]
    """Selects this method: replay."""
    share: float = Field(0.1, gt=0, lt=1)
    """Share of the final training mix that is replayed examples."""
    source: Literal["data", "self"] = "data"
    """data: the retain: tasks' training examples (and earlier stages'); self: the base model's own
    responses to those prompts, generated before training (when the original answers are unavailable)."""
    samples: int = Field(200, ge=1)
    """Buffer size: examples kept per task."""
    max_new_tokens: int = Field(64, ge=1)
    """Self-replay: length of the generated responses."""


RetentionMethod = Annotated[EWCConfig | SIConfig | L2SPConfig | DistillConfig | ReplayConfig, Field(discriminator="method")]


class LmEvalConfig(_Strict):
    """A task of EleutherAI's lm-evaluation-harness scored as a retained task (`pip install 'retune[lmeval]'`)."""

    task: str
    """The harness's task name (e.g. hellaswag, arc_easy), or one of your own task YAMLs in include_path."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N documents."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt. Default: the task's own."""
    include_path: str | None = None
    """A folder of task YAMLs (a custom task over a local JSONL works offline; hub tasks need a network)."""
    metric: str | None = None
    """The headline metric of the task's results. Default: the first of acc_norm, acc, exact_match, f1."""


class RetainConfig(_Strict):
    """What the model must keep knowing: scored on the base model, at every evaluation, and at the end."""

    tasks: list[TaskConfig] = []
    """Retained tasks (built-in or user data), each with its metric; never trained on (unless replayed)."""
    probe: str | None = "general"
    """A cheap probe: the change in token NLL on held-out general text. general: paragraphs of the
    Python help topics shipped with the standard library (pydoc_data); or a .txt / .jsonl (text
    column) file; null: no probe."""
    probe_samples: int = Field(64, ge=1)
    """Paragraphs of probe text scored."""
    max_eval_samples: int | None = Field(100, ge=1)
    """Default cap on each retained task's test examples (a task's own max_eval_samples wins)."""
    lm_eval: list[LmEvalConfig] = []
    """lm-evaluation-harness tasks scored like retained tasks (per-document scores, paired intervals),
    e.g. [{task: hellaswag, limit: 500}]."""


class _StageFields(_Strict):
    """The keys every stage has, whatever its type."""

    name: str | None = None
    """The stage's (and its task's) name in logs, summary.json and the accuracy matrix; the task's own
    name wins. Default: the built-in dataset's name or the training file's stem."""
    task: TaskConfig
    """What this stage trains on and is scored by (the keys of a data.tasks entry)."""
    epochs: float | None = Field(None, gt=0)
    """trainer.epochs for this stage."""
    max_steps: int | None = Field(None, ge=1)
    """trainer.max_steps for this stage."""
    lr: float | None = Field(None, gt=0)
    """trainer.lr for this stage."""

    def trainer_for(self, trainer: TrainerConfig) -> TrainerConfig:
        """`trainer` with this stage's overrides (epochs, max_steps, lr)."""
        over = {k: v for k in ("epochs", "max_steps", "lr") if (v := getattr(self, k)) is not None}
        return trainer.model_copy(update=over)


class StageConfig(_StageFields, SFTObjective):
    """One fine-tuning stage of a sequence (`stages:`): its task, its type (sft when not given) and
    optional trainer overrides."""


class DPOStageConfig(_StageFields, DPOObjective):
    """A DPO stage: a stage's keys plus the dpo objective's (the reference is the model as the stage starts)."""


class ORPOStageConfig(_StageFields, ORPOObjective):
    """An ORPO stage: a stage's keys plus the orpo objective's."""


class SimPOStageConfig(_StageFields, SimPOObjective):
    """A SimPO stage: a stage's keys plus the simpo objective's."""


class KTOStageConfig(_StageFields, KTOObjective):
    """A KTO stage: a stage's keys plus the kto objective's (the reference is the model as the stage starts)."""


class GRPOStageConfig(_StageFields, GRPOObjective):
    """A GRPO stage: a stage's keys plus the grpo objective's (the reference is the model as the stage starts)."""


Stage = Annotated[
    StageConfig | DPOStageConfig | ORPOStageConfig | SimPOStageConfig | KTOStageConfig | GRPOStageConfig, Field(discriminator="type")
]
