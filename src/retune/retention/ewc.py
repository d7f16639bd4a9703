"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), online across stages (Schwarz et al. 2018).

The penalty (eq. 3):  L(theta) = L_new(theta) + lambda/2 * sum_i F_i (theta_i - theta*_i)^2
where F is the diagonal of the empirical Fisher information of the old task at theta*: the mean
over samples of the squared per-sample gradient of the log-likelihood. Only TRAINABLE parameters
carry F and theta* (the adapters under LoRA / QLoRA): the frozen base cannot drift.

Online EWC: after each stage, F <- gamma * F + F_new and theta* <- the weights at the stage's end,
so memory stays two copies of the trainable parameters however many stages there are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from retune.data.batching import collate
from retune.data.templates import Encoded
from retune.models.loss import token_nll
from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext, nbytes, quadratic_penalty, snapshot, trainable
from retune.train.distributed import all_reduce_sum
from retune.types import Autocast, Model

if TYPE_CHECKING:
    from retune.config import EWCConfig


def diagonal_fisher(model: Model, examples: list[Encoded], pad_id: int, autocast: Autocast) -> dict[str, torch.Tensor]:
    """mean_n (d log p(y_n | x_n) / d theta)^2 over the trainable parameters, one sample at a time
    (a batch gradient squared would be the square of a mean, not the mean of squares)."""
    params = trainable(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic model
    for ex in examples:
        model.zero_grad(set_to_none=True)
        batch = collate([ex], pad_id)
        with autocast():
            nll, n_tok = token_nll(model, batch)
            loss = nll.sum() / n_tok.sum().clamp(min=1)  # log-likelihood per token of the sample
        loss.backward()
        grads = {n: p.grad.detach().float() for n, p in params if p.grad is not None}
        if grads:  # fisher += g * g over all parameters at once (no per-parameter temporaries)
            torch._foreach_addcmul_([fisher[n] for n in grads], list(grads.values()), list(grads.values()))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    count = torch.tensor(float(len(examples)))
    all_reduce_sum([*fisher.values(), count])
    for f in fisher.values():
        f.div_(count.clamp(min=1))
    return fisher


class EWC(Regularizer):
    name = "ewc"

    def __init__(self, weight: float, samples: int = 200, gamma: float = 1.0, normalize: bool = True):
        self.weight, self.samples, self.gamma, self.normalize = weight, samples, gamma, normalize
        self.scale = 1.0  # 1 / mean(F) when normalised: lambda then reads like L2-SP's alpha
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: EWCConfig) -> EWC:
        return cls(cfg.weight, cfg.samples, cfg.gamma, cfg.normalize)

    @staticmethod
    def memory_bytes(model: Model) -> int:
        """F and theta*: two fp32 copies of the trainable parameters (reported before training)."""
        return 2 * sum(p.numel() for _, p in trainable(model)) * 4

    def prepare(self, model: Model, ctx: RetentionContext) -> None:
        """F of the retained tasks (ctx.anchor_data) at the starting weights."""
        self.consolidate(model, ctx)

    def end_stage(self, model: Model, ctx: RetentionContext) -> None:
        """Online EWC: add the finished stage's F and anchor at its end weights."""
        self.consolidate(model, ctx)

    def consolidate(self, model: Model, ctx: RetentionContext) -> None:
        """Estimate F on the old task's samples (ctx.anchor_data) and anchor at the current weights (online update)."""
        data = ctx.anchor_data[: self.samples]
        if not data:
            return
        new = diagonal_fisher(model, data, ctx.pad_id, ctx.autocast)
        self.fisher = {n: self.gamma * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
        self.anchor = snapshot(model)
        self.scale = 1.0 / max(_mean(self.fisher), 1e-30) if self.normalize else 1.0
        ctx.log(
            {
                "event": "ewc_consolidated",
                "samples": len(data),
                "fisher_mean": _mean(self.fisher),
                "memory_mb": nbytes(self.fisher) * 2 / 2**20,
            }
        )

    def step_penalty(self, model: Model) -> torch.Tensor | None:
        if not self.fisher or self.weight == 0:
            return None
        return quadratic_penalty(model, self.anchor, 0.5 * self.weight * self.scale, self.fisher)

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor, self.scale = state.get("fisher", {}), state.get("anchor", {}), state.get("scale", 1.0)


def _mean(tensors: dict[str, torch.Tensor]) -> float:
    n = sum(t.numel() for t in tensors.values())
    return float(sum(t.sum() for t in tensors.values()) / max(n, 1))
