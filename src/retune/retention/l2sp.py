"""L2-SP (Li et al. 2018): a pull toward the starting point instead of toward zero.

    Omega(theta) = alpha/2 * ||theta - theta_0||^2   over the trainable parameters (eq. 4)

theta_0 is taken in `prepare` (the pretrained weights for full fine-tuning, the freshly initialised
adapter under LoRA) and moved to each stage's end weights by `end_stage` across stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext, quadratic_penalty, snapshot, trainable
from retune.types import Model

if TYPE_CHECKING:
    from retune.config import L2SPConfig


class L2SP(Regularizer):
    name = "l2sp"

    def __init__(self, weight: float):
        self.weight = weight
        self.anchor: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: L2SPConfig) -> L2SP:
        return cls(cfg.weight)

    @staticmethod
    def memory_bytes(model: Model) -> int:
        return sum(p.numel() for _, p in trainable(model)) * 4

    def prepare(self, model: Model, ctx: RetentionContext | None = None) -> None:
        """theta_0: the weights training starts from."""
        self.anchor = snapshot(model)

    def end_stage(self, model: Model, ctx: RetentionContext | None = None) -> None:
        """Re-anchor at the finished stage's end weights."""
        self.anchor = snapshot(model)

    def step_penalty(self, model: Model) -> torch.Tensor | None:
        if not self.anchor or self.weight == 0:
            return None
        return quadratic_penalty(model, self.anchor, 0.5 * self.weight)

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state.get("anchor", {})
