"""Synaptic Intelligence (Zenke et al. 2017): importance from the path integral of the loss.

During a stage, for every trainable parameter k (eq. 3, first order):
    omega_k += -g_k(t) * delta_theta_k(t)          g read after backward, delta after the step
At the stage's end (eq. 5):
    Omega_k += omega_k / ((theta_k(end) - theta_k(start))^2 + xi),   clipped at 0, then omega = 0
and the next stage is penalised by (eq. 4):
    c * sum_k Omega_k (theta_k - theta_k(end))^2

A parameter that never moves accumulates nothing, so its importance is exactly 0. With no earlier
stage in this run, `estimate` walks a short SGD path on the retention data from the current
weights (then puts the weights back), which gives the importance of that data to use now.
g is the gradient the loop back-propagated (the task loss plus any penalties of that step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from retune.data.batching import collate
from retune.models.loss import token_nll
from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext, quadratic_penalty, snapshot, trainable
from retune.types import Model

if TYPE_CHECKING:
    from retune.config import SIConfig


class SI(Regularizer):
    name = "si"

    def __init__(
        self,
        weight: float,
        damping: float = 1e-3,
        warmup_steps: int = 20,
        warmup_lr: float = 1e-4,
        batch_size: int = 4,
        normalize: bool = True,
    ):
        self.weight, self.damping, self.normalize = weight, damping, normalize
        self.scale = 1.0  # 1 / mean(Omega) when normalised
        self.warmup_steps, self.warmup_lr, self.batch_size = warmup_steps, warmup_lr, batch_size
        self.importance: dict[str, torch.Tensor] = {}  # Omega, consolidated
        self.anchor: dict[str, torch.Tensor] = {}  # theta at the end of the last stage
        self.omega: dict[str, torch.Tensor] = {}  # running path integral of this stage
        self.start: dict[str, torch.Tensor] = {}  # theta at this stage's start
        self._prev: dict[str, torch.Tensor] = {}
        self._grad: dict[str, torch.Tensor] = {}  # g of the current step (buffers reused across steps)
        self._moved: list[str] = []  # the parameters with a gradient in the current step

    @classmethod
    def from_config(cls, cfg: SIConfig) -> SI:
        return cls(cfg.weight, cfg.damping, cfg.warmup_steps, cfg.warmup_lr, normalize=cfg.normalize)

    @staticmethod
    def memory_bytes(model: Model) -> int:
        return 6 * sum(p.numel() for _, p in trainable(model)) * 4  # Omega, anchor, omega, start, prev, grad

    def begin(self, model: Model) -> None:
        """Start a stage's path integral at the current weights."""
        self.start = snapshot(model)
        self._prev = {n: t.clone() for n, t in self.start.items()}
        self.omega = {n: torch.zeros_like(t) for n, t in self.start.items()}

    def before_step(self, model: Model) -> None:
        """Keep g (before clipping) for after_step, in buffers reused every step instead of a fresh
        copy of every gradient (benchmarks/penalty_speed.py)."""
        if not self.omega:
            self.begin(model)
        with torch.no_grad():
            grads = [(n, p.grad) for n, p in trainable(model) if p.grad is not None]
            for n, g in grads:
                if n not in self._grad:
                    self._grad[n] = torch.empty_like(g, dtype=torch.float32)
            self._moved = [n for n, _ in grads]
            if grads:
                torch._foreach_copy_([self._grad[n] for n in self._moved], [g for _, g in grads])

    def after_step(self, model: Model) -> None:
        """omega += -g * (theta - prev); prev = theta. In multi-tensor ops, in place (one pass per
        operation over all parameters, nothing allocated): this runs every step."""
        with torch.no_grad():
            now = {n: p.detach().float() for n, p in trainable(model)}
            if self._moved:
                back = [self._prev[n] for n in self._moved]
                torch._foreach_sub_(back, [now[n] for n in self._moved])  # prev - theta = -delta
                torch._foreach_addcmul_([self.omega[n] for n in self._moved], [self._grad[n] for n in self._moved], back)
            torch._foreach_copy_([self._prev[n] for n in now], list(now.values()))
        self._moved = []

    def prepare(self, model: Model, ctx: RetentionContext) -> None:
        """Importance of the retained tasks (ctx.anchor_data), from a short path walked and undone."""
        self.estimate(model, ctx)

    def end_stage(self, model: Model, ctx: RetentionContext) -> None:
        """The finished stage's path integral becomes importance (eq. 5); the next stage starts its own."""
        self.consolidate(model)

    def consolidate(self, model: Model) -> None:
        """End of a stage: fold the path integral into Omega and anchor at the current weights."""
        if not self.omega:
            return
        # no all-reduce here: the loop hands before_step gradients already summed over processes
        end = snapshot(model)
        for n, w in self.omega.items():
            imp = (w / ((end[n] - self.start[n]) ** 2 + self.damping)).clamp(min=0)
            self.importance[n] = self.importance[n] + imp if n in self.importance else imp
        self.anchor = end
        self.scale = 1.0 / max(_mean(self.importance), 1e-30) if self.normalize else 1.0
        self.begin(model)

    def estimate(self, model: Model, ctx: RetentionContext) -> None:
        """Importance of the retention data with no earlier stage: a short SGD path, then undo it."""
        data = ctx.anchor_data
        if not data or self.warmup_steps == 0:
            return
        saved = snapshot(model)
        params = trainable(model)
        self.begin(model)
        was_training = model.training
        model.eval()
        for s in range(self.warmup_steps):
            i = (s * self.batch_size) % len(data)
            batch = collate([data[(i + j) % len(data)] for j in range(self.batch_size)], ctx.pad_id)
            model.zero_grad(set_to_none=True)
            with ctx.autocast():
                nll, n_tok = token_nll(model, batch)
                loss = nll.sum() / n_tok.sum().clamp(min=1)
            loss.backward()
            self.before_step(model)
            with torch.no_grad():
                for _, p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-self.warmup_lr)
            self.after_step(model)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        self.consolidate(model)
        with torch.no_grad():  # back to where training starts; the anchor is that point too
            for n, p in params:
                p.copy_(saved[n].to(p.dtype))
        self.anchor = saved
        self.begin(model)
        ctx.log({"event": "si_estimated", "steps": self.warmup_steps, "importance_mean": _mean(self.importance)})

    def step_penalty(self, model: Model) -> torch.Tensor | None:
        if not self.importance or self.weight == 0:
            return None
        return quadratic_penalty(model, self.anchor, self.weight * self.scale, self.importance)

    def state_dict(self) -> dict:
        return {
            "importance": self.importance,
            "anchor": self.anchor,
            "omega": self.omega,
            "start": self.start,
            "prev": self._prev,
            "scale": self.scale,
        }

    def load_state_dict(self, state: dict) -> None:
        self.importance, self.anchor = state.get("importance", {}), state.get("anchor", {})
        self.omega, self.start, self._prev = state.get("omega", {}), state.get("start", {}), state.get("prev", {})
        self.scale = state.get("scale", 1.0)


def _mean(tensors: dict[str, torch.Tensor]) -> float:
    n = sum(t.numel() for t in tensors.values())
    return float(sum(t.sum() for t in tensors.values()) / max(n, 1))
