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
    """Selects the stage type: sft (supervised), dpo, orpo or simpo (preferences)."""


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


ObjectiveConfig = Annotated[SFTObjective | DPOObjective | ORPOObjective | SimPOObjective, Field(discriminator="type")]
OBJECTIVE_TYPES = ("sft", "dpo", "orpo", "simpo")


def default_type(value: Any) -> Any:
    """A mapping without `type` is an sft stage (configs written before stage types existed)."""
    if isinstance(value, dict) and "type" not in value:
        return {"type": "sft", **value}
    return value
