"""What the retention methods share: the trainable parameters, and the data a method anchors on."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from retune.data.templates import Encoded
from retune.types import Autocast, Model


def trainable(model: Model) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the optimizer updates: all of them for full fine-tuning, the adapters under
    LoRA / QLoRA. Importance and anchors are kept for these only (the frozen base never moves)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model: Model) -> dict[str, torch.Tensor]:
    """fp32 copies of the trainable parameters (the anchor theta*)."""
    return {n: p.detach().float().clone() for n, p in trainable(model)}


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class RetentionContext:
    """What a method may need in `prepare` and `end_stage` (the recipe fills it in).

    anchor_data: examples of what must be kept (the previous stage's task, or the `retain:` tasks),
    already encoded; EWC's Fisher, SI's warm-up path and distillation on retention prompts use it.
    """

    pad_id: int
    autocast: Autocast = nullcontext
    anchor_data: list[Encoded] = field(default_factory=list)
    log: Callable[[dict], None] = lambda row: None


class _Quadratic(torch.autograd.Function):
    """coef * sum_k w_k * (theta_k - a_k)^2 over lists of tensors (w = None: all ones), forward and
    backward in multi-tensor ops. Autograd over the per-parameter expression made five temporaries of
    every parameter per step; this keeps one (SmolLM2-135M, full FT: 642 -> 376 ms per step with the
    backward, benchmarks/penalty_speed.py)."""

    @staticmethod
    def forward(
        ctx: Any, coef: float, weights: list[torch.Tensor] | None, anchors: list[torch.Tensor], *params: torch.Tensor
    ) -> torch.Tensor:
        diff = torch._foreach_sub([p.detach().float() for p in params], anchors)
        weighted = torch._foreach_mul(diff, weights) if weights is not None else diff
        total = torch.zeros((), dtype=torch.float64)
        for wd, d in zip(weighted, diff, strict=True):
            total += torch.vdot(wd.flatten(), d.flatten()).double()
        ctx.coef, ctx.weighted, ctx.dtypes = coef, weighted, [p.dtype for p in params]
        return (coef * total).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        torch._foreach_mul_(ctx.weighted, 2.0 * ctx.coef * float(grad))  # d/dtheta = 2 coef w (theta - a)
        grads = [g.to(dt) for g, dt in zip(ctx.weighted, ctx.dtypes, strict=True)]
        ctx.weighted = None
        return (None, None, None, *grads)


def quadratic_penalty(
    model: Model, anchor: dict[str, torch.Tensor], coef: float, weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """coef * sum_i w_i (theta_i - anchor_i)^2 over the trainable parameters that have an anchor
    (EWC: w = Fisher, SI: w = importance, L2-SP: w = 1), differentiable in the parameters."""
    named = [(n, p) for n, p in trainable(model) if n in anchor and (weights is None or n in weights)]
    if not named:
        return None
    w = [weights[n] for n, _ in named] if weights is not None else None
    out: torch.Tensor = _Quadratic.apply(coef, w, [anchor[n] for n, _ in named], *[p for _, p in named])
    return out
