"""Retention methods, registered by short name: a config says `retention: [{method: ewc, weight: 100}]`.

Each method is one file and returns a penalty (see base.py); replay is data (retune.data.replay)
and is handled by the recipe, not here.
"""

from __future__ import annotations

from typing import Any

from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext
from retune.retention.distill import Distillation
from retune.retention.ewc import EWC
from retune.retention.l2sp import L2SP
from retune.retention.si import SI

METHODS: dict[str, type[Regularizer]] = {"ewc": EWC, "si": SI, "l2sp": L2SP, "distill": Distillation}
DATA_METHODS = {"replay"}  # mixing sources, not penalties


def build(method_cfgs: list[Any], model: Any, ctx: RetentionContext) -> list[Regularizer]:
    """The regularizers of `retention:` for a model whose adapter is attached (trainable set known).

    EWC's Fisher and SI's importance are estimated here, from ctx.anchor_data, before training."""
    regs: list[Regularizer] = []
    for c in method_cfgs:
        if c.method in DATA_METHODS:
            continue
        if c.method == "ewc":
            reg: Regularizer = EWC(c.weight, c.samples, c.gamma, c.normalize)
            if c.weight:
                reg.consolidate(model, ctx)
        elif c.method == "si":
            reg = SI(c.weight, c.damping, c.warmup_steps, c.warmup_lr, normalize=c.normalize)
            if c.weight:
                reg.estimate(model, ctx)
        elif c.method == "l2sp":
            reg = L2SP(c.weight)
            reg.consolidate(model)
        elif c.method == "distill":
            reg = Distillation(c.weight, c.temperature, tuple(c.prompts), c.batch_size, c.samples)
            if c.weight:
                reg.setup(model, ctx)
        else:  # the config schema admits only registered names
            raise ValueError(f"unknown retention method {c.method}")
        regs.append(reg)
    return regs


def memory_report(method_cfgs: list[Any], model: Any) -> dict[str, float]:
    """Extra memory each method holds during training, in MB (printed before training)."""
    return {c.method: METHODS[c.method].memory_bytes(model) / 2**20 for c in method_cfgs if c.method in METHODS}


__all__ = ["METHODS", "Regularizer", "RetentionContext", "build", "memory_report"]
