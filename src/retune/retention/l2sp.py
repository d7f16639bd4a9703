"""L2-SP (Li et al. 2018): a pull toward the starting point instead of toward zero.

    Omega(theta) = alpha/2 * ||theta - theta_0||^2   over the trainable parameters (eq. 4)

theta_0 is taken when the method is built (the pretrained weights for full fine-tuning, the
freshly initialised adapter under LoRA) and moved to each stage's end weights across stages.
"""

from __future__ import annotations

from typing import Any

import torch

from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext, snapshot, trainable


class L2SP(Regularizer):
    name = "l2sp"

    def __init__(self, weight: float):
        self.weight = weight
        self.anchor: dict[str, torch.Tensor] = {}

    @staticmethod
    def memory_bytes(model: Any) -> int:
        return sum(p.numel() for _, p in trainable(model)) * 4

    def consolidate(self, model: Any, ctx: RetentionContext | None = None, examples: Any = None) -> None:
        self.anchor = snapshot(model)

    def step_penalty(self, model: Any) -> torch.Tensor | None:
        if not self.anchor or self.weight == 0:
            return None
        total = sum(((p.float() - self.anchor[n]) ** 2).sum() for n, p in trainable(model) if n in self.anchor)
        return 0.5 * self.weight * total

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state.get("anchor", {})
