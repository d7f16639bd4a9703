"""The interface every retention method implements. A method returns penalties; it never changes
the loop's state. Replay is not here: it is data (a mixing source).

A method's whole life, in the order the library calls it:
    from_config(cfg)               build from its `retention:` entry                  (retention.build)
    prepare(model, ctx)            before training: Fisher, importance, anchors, teacher (retention.build; skipped at weight 0)
    for each optimizer step (train/loop.py):
        for each micro-batch:  loss += batch_penalty(model, batch, scale)     (e.g. distillation)
        once:                  loss += step_penalty(model)                     (e.g. EWC, L2-SP, SI)
        after backward:        before_step(model)   (gradients are there; SI reads them)
        after optimizer.step:  after_step(model)    (SI accumulates its path integral)
    end_stage(model, ctx)          between stages of a sequence (the stages recipe, on every rank);
                                   ctx.anchor_data = the finished stage's training examples
    state_dict / load_state_dict   in every checkpoint, for an exact resume
memory_bytes(model) is asked of the class before any of this, to print what a method will hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retune.types import Model

if TYPE_CHECKING:
    from retune.retention.common import RetentionContext


class Regularizer:
    name: ClassVar[str] = "regularizer"  # the config's `method` literal; also the key of its penalty and state
    weight: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> Regularizer:
        """Build from the method's config section (retune.config.retention). Any here: each method
        takes its own section (EWC an EWCConfig, ...), which a narrower type would forbid."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    @staticmethod
    def memory_bytes(model: Model) -> int:
        """Extra memory the method holds during training (reported before training)."""
        return 0

    def prepare(self, model: Model, ctx: RetentionContext) -> None:
        """Before training, with the adapter attached (the trainable set known): estimate what the
        penalty needs from ctx.anchor_data (what must be kept)."""

    def batch_penalty(self, model: Model, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor | None:
        """A term for one micro-batch; `scale` is 1 / (labelled tokens in the optimizer step)."""
        return None

    def step_penalty(self, model: Model) -> torch.Tensor | None:
        """A term that depends on the parameters only, added once per optimizer step."""
        return None

    def before_step(self, model: Model) -> None:
        """Called after backward, before the optimizer step."""

    def after_step(self, model: Model) -> None:
        """Called after the optimizer step."""

    def end_stage(self, model: Model, ctx: RetentionContext) -> None:
        """A stage of a sequence is done (ctx.anchor_data: its training examples): carry what it
        taught into the next stage's penalty."""

    def state_dict(self) -> dict:
        """What must survive a checkpoint for an exact resume (e.g. SI's running sums)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
