"""A stage type: one object that knows how to encode a task's records, batch them, take the loss and
score validation. The loop (train/loop.py) asks it, and never which one it is.

    obj = objective_for(cfg.objective)            # or a stage's config: looked up once, by `type`
    examples = [obj.encode(...) for record in records]
    obj.prepare(model, examples, ...)             # e.g. a preference stage's reference log-probabilities

The loss contract is the one the loop normalises by: `loss(model, batch, scale)` returns the sum over
the micro-batch of (per-unit loss x scale), where scale is 1 / (units in the optimizer step) and a
unit is what `count` says (a labelled token for sft, a pair for dpo): so 1x8 == 8x1 and N processes
make the update of one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retune.data.batching import collate
from retune.data.templates import Encoded, Formatter
from retune.evaluate.scoring import nll_totals
from retune.models.loss import training_loss
from retune.types import Autocast

if TYPE_CHECKING:
    from retune.data.dataset import TaskData
    from retune.models.tasks import TaskType


class Objective:
    """What differs between stage types; sft's behaviour is the default of every method."""

    name: ClassVar[str] = "sft"
    metric_names: ClassVar[tuple[str, ...]] = ()  # summed into each training / validation row, per unit

    def __repr__(self) -> str:
        return f"<stage type {self.name}>"

    # ------------------------------------------------------------ data

    def encode_task(
        self, kind: TaskType, fmt: Formatter, task: TaskData, records: list[dict], where: str, seed: int, max_new_tokens: int = 64
    ) -> list[Encoded]:
        """A task's records as training / validation examples (each carrying the task's loss weight).
        `seed` and `max_new_tokens` (eval's, for a task without its own) are for pairs a stage makes."""
        out = [kind.encode(fmt, task.template, r, task.labels, f"{where} record {i + 1}") for i, r in enumerate(records)]
        for e in out:
            e.weight = task.loss_weight
        return out

    def count(self, e: Encoded) -> int:
        """The units an example adds to the step's normaliser: labelled tokens (targets are labels shifted by one)."""
        return sum(1 for y in e.labels[1:] if y != -100)

    def length(self, e: Encoded) -> int:
        """Tokens of an example, for batching by length and the tokens/s count."""
        return len(e.input_ids)

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

    def rows(self, e: Encoded) -> list[Encoded]:
        """The sequences an example puts through the forward with gradients (`retune plan` sizes a
        micro-batch by them): itself for sft; a pair's two answers; grpo's sampled answers."""
        return [e]

    def prepare(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> None:
        """Anything the loss needs from the model before training (nothing for sft)."""

    def before_step(self, model: Any, examples: list[Encoded], pad_id: int, autocast: Autocast) -> None:
        """Once per optimizer step, before its micro-batches, on this process's share of the global batch
        (maybe none: then it still joins any all-reduce): kto's KL reference point, grpo's generations."""

    # ------------------------------------------------------------ loss

    def loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float) -> tuple[torch.Tensor, dict[str, float]]:
        """(sum of per-unit loss x scale to back-propagate, {metric: sum of per-unit value x scale})."""
        # per-task loss weights, when the batch has them, scale each row (B,)
        loss, _ = training_loss(model, batch, batch["weights"] * scale if "weights" in batch else scale)
        return loss, {}

    def validation_sums(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, float]:
        """{"loss": summed loss, "n": units, metric: summed value}: sums, so shards of several processes add up."""
        nll, n = nll_totals(model, examples, pad_id, batch_size, autocast)
        return {"loss": float(nll), "n": float(n)}

    def summary(self, model: Any, val: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, Any]:
        """What summary.json records of this stage type beyond the task scores (nothing for sft)."""
        return {}


SFT = Objective()


def curves(rows: list[dict], metric_names: tuple[str, ...], stage: int | None = None) -> dict[str, dict[str, list[Any]]]:
    """summary.json's curves of a preference / RL stage from its metrics rows: per training step the loss
    and the stage type's metrics (dpo: reward margin, accuracy, chosen and rejected rewards; kto and grpo:
    KL to the reference, rewards), and the same at each validation."""
    rows = [r for r in rows if r.get("stage") == stage and "step" in r]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    return {
        "train": {k: [r.get(k) for r in train] for k in ("step", "loss", *metric_names)},
        "validation": {k: [r.get(f"val_{k}" if k != "step" else k) for r in val] for k in ("step", "loss", *metric_names)},
    }
