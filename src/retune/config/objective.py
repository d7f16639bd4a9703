"""What a run (or a stage) minimises: the stage types. `objective:` for a one-stage run, `type:` and
the same keys on each entry of `stages:`. sft is the supervised loss; the others train on preferences.

Each class here is one stage type's keys; the object that encodes, computes the loss and scores
is in retune/objectives/, looked up by the same `type` name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from retune.config.sections import _Strict

PairSource = Literal["data", "other", "self"]


class SFTObjective(_Strict):
    """Supervised fine-tuning: token cross-entropy on the responses (today's loss)."""

    type: Literal["sft"] = "sft"
    """Selects the stage type: sft (supervised), dpo, orpo, simpo, kto (preferences) or grpo (rewards)."""


class _Paired(_Strict):
    """Keys shared by the objectives that learn from (prompt, chosen, rejected) pairs."""

    pairs: PairSource = "data"
    """Where the pairs come from. data: the records' own `prompt`, `chosen` and `rejected` columns
    (TRL's standard preference format, plain text or conversational; map other names with columns);
    other: a supervised task's records, its reference response as chosen and another record's
    reference response as rejected (deterministic by trainer.seed); self: `samples` answers sampled from
    the model as the stage starts, scored against the task's reference by its metric, best as chosen and
    worst as rejected (prompts whose samples tie are dropped; the counts are printed and in summary.json)."""
    samples: int = Field(4, ge=2)
    """pairs: self: answers sampled per prompt."""
    sample_temperature: float = Field(1.0, gt=0)
    """pairs: self: sampling temperature (top_p is eval.top_p)."""


class DPOObjective(_Paired):
    """Direct Preference Optimization (Rafailov et al. 2023): a reward margin over a frozen reference
    (the model at the start of the stage; its log-probabilities are computed once, before training)."""

    type: Literal["dpo"]
    """Selects the stage type: dpo."""
    beta: float = Field(0.1, gt=0)
    """Inverse temperature of the implicit reward beta * log(pi / pi_ref) (eq. 7)."""
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge"] = "sigmoid"
    """sigmoid: the DPO paper's loss; robust: rDPO for noisy labels (Chowdhury et al. 2024, uses
    label_smoothing); ipo: IPO (Azar et al. 2023, per-token averaged as TRL does); hinge: SLiC's hinge."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """The assumed share of flipped labels, for loss_type robust (TRL's sigmoid loss has none)."""

    @model_validator(mode="after")
    def _check(self) -> DPOObjective:
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(
                "dpo label_smoothing applies to loss_type: robust (the sigmoid loss has no smoothing in TRL); set loss_type: robust"
            )
        return self


class ORPOObjective(_Paired):
    """Odds Ratio Preference Optimization (Hong et al. 2024): NLL of the chosen response plus an
    odds-ratio term; no reference model."""

    type: Literal["orpo"]
    """Selects the stage type: orpo."""
    beta: float = Field(0.1, gt=0)
    """lambda of eq. 6: weight of the log odds-ratio term against the NLL."""


class SimPOObjective(_Paired):
    """Simple Preference Optimization (Meng et al. 2024): a length-normalised reward margin; no reference."""

    type: Literal["simpo"]
    """Selects the stage type: simpo."""
    beta: float = Field(2.0, gt=0)
    """beta of eq. 6: scale of the average log-probability reward."""
    gamma: float = Field(0.5, ge=0)
    """gamma of eq. 6: the target reward margin (TRL's simpo_gamma)."""


class KTOObjective(_Strict):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024): unpaired answers, each labelled desirable
    or not (TRL's `prompt` / `completion` / `label` format), against a frozen reference (the model at the
    start of the stage) and a KL reference point estimated on mismatched (prompt, completion) pairs."""

    type: Literal["kto"]
    """Selects the stage type: kto."""
    beta: float = Field(0.1, gt=0)
    """Inverse temperature of the implicit reward beta * log(pi / pi_ref)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's eq. 7 (with the KL reference point); apo_zero_unpaired: APO-zero's unpaired form
    (D'Oosterlinck et al. 2024), no KL term."""
    desirable_weight: float = Field(1.0, gt=0)
    """lambda_D: weight of the desirable answers' losses (to balance unequal counts)."""
    undesirable_weight: float = Field(1.0, gt=0)
    """lambda_U: weight of the undesirable answers' losses."""


class GRPOObjective(_Strict):
    """Group Relative Policy Optimization (Shao et al. 2024) with verifiable rewards: for each training
    prompt the model samples `generations` answers (the evaluation's batched, stop-string-aware path), each
    is rewarded by the task's metric against the reference (pass@1 in the sandbox for tasks with tests)
    plus an optional format reward, and the answers' log-probabilities are pushed up or down by their
    reward's standing in the group. On-policy (one update per generation, as TRL's default)."""

    type: Literal["grpo"]
    """Selects the stage type: grpo."""
    generations: int = Field(4, ge=2)
    """Answers sampled per prompt: the group whose mean reward is each answer's baseline (TRL's num_generations)."""
    beta: float = Field(0.0, ge=0)
    """KL weight: beta * KL(pi || pi_ref) per token (k3 estimator times the importance ratio, as TRL's
    default use_bias_correction_kl: the unbiased reverse-KL gradient); the reference under LoRA / QLoRA is
    the base model (adapters switched off, as TRL), under full fine-tuning a frozen copy of the model as
    the stage starts. 0: no KL term."""
    loss_type: Literal["grpo", "dr_grpo"] = "grpo"
    """grpo: each answer's per-token loss averaged over its tokens, then over answers (the paper);
    dr_grpo: summed over tokens and divided by max_new_tokens (Liu et al. 2025), free of the length bias."""
    scale_rewards: Literal["group", "none"] = "group"
    """group: advantages are (reward - group mean) / (group std + 1e-4); none: reward - group mean (Dr. GRPO)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the generations (top_p is eval.top_p)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Tokens per generation; default: the task's max_new_tokens, else eval.max_new_tokens."""
    reward: Literal["metric"] = "metric"
    """The verifiable reward: the task's metric of each answer against its reference (accuracy and
    exact_match 0/1, ROUGE-L F, sentence chrF / BLEU, pass_at_1 by running the task's tests in the
    sandbox; for the `code` metric, chrF of the code)."""
    format_pattern: str | None = None
    """An optional format reward: a regular expression (Python `re.search`, DOTALL) the answer should match."""
    format_weight: float = Field(0.0, ge=0)
    """Added to the reward of an answer that matches format_pattern."""

    @model_validator(mode="after")
    def _check(self) -> GRPOObjective:
        import re

        if (self.format_pattern is None) != (self.format_weight == 0):
            raise ValueError("grpo: a format reward needs both format_pattern (a regex) and format_weight (> 0)")
        if self.format_pattern is not None:
            try:
                re.compile(self.format_pattern)
            except re.error as e:
                raise ValueError(f"grpo format_pattern is not a regular expression ({e}); fix the pattern") from None
        return self


ObjectiveConfig = Annotated[
    SFTObjective | DPOObjective | ORPOObjective | SimPOObjective | KTOObjective | GRPOObjective, Field(discriminator="type")
]
OBJECTIVE_TYPES = ("sft", "dpo", "orpo", "simpo", "kto", "grpo")


def default_type(value: Any) -> Any:
    """A mapping without `type` is an sft stage (configs written before stage types existed)."""
    if isinstance(value, dict) and "type" not in value:
        return {"type": "sft", **value}
    return value
