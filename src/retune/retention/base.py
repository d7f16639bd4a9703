"""The interface every retention method implements. A method returns penalties; it never changes
the loop's state. Replay is not here: it is data (a mixing source).

The loop calls, for each optimizer step:
    for each micro-batch:  loss += batch_penalty(model, batch, scale)     (e.g. distillation)
    once:                  loss += step_penalty(model)                     (e.g. EWC, L2-SP, SI)
    after backward:        before_step(model)   (gradients are there; SI reads them)
    after optimizer.step:  after_step(model)    (SI accumulates its path integral)
"""

from __future__ import annotations

from typing import Any

import torch


class Regularizer:
    name: str = "regularizer"
    weight: float = 0.0

    def batch_penalty(self, model: Any, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor | None:
        """A term for one micro-batch; `scale` is 1 / (labelled tokens in the optimizer step)."""
        return None

    def step_penalty(self, model: Any) -> torch.Tensor | None:
        """A term that depends on the parameters only, added once per optimizer step."""
        return None

    def before_step(self, model: Any) -> None:
        """Called after backward, before the optimizer step."""

    def after_step(self, model: Any) -> None:
        """Called after the optimizer step."""

    def state_dict(self) -> dict:
        """What must survive a checkpoint for an exact resume (e.g. SI's running sums)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
