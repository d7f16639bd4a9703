"""Retention methods, registered by short name: a config says `retention: [{method: ewc, weight: 100}]`.

Each method is one file and returns a penalty (see base.py for its life cycle); replay is data
(retune.data.replay) and is handled by the recipe, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext
from retune.retention.distill import Distillation
from retune.retention.ewc import EWC
from retune.retention.l2sp import L2SP
from retune.retention.si import SI
from retune.types import Model

if TYPE_CHECKING:
    from retune.config import RetentionMethod

METHODS: dict[str, type[Regularizer]] = {cls.name: cls for cls in (EWC, SI, L2SP, Distillation)}
DATA_METHODS = {"replay"}  # mixing sources, not penalties


def build(method_cfgs: Sequence[RetentionMethod], model: Model, ctx: RetentionContext) -> list[Regularizer]:
    """The regularizers of `retention:` for a model whose adapter is attached (trainable set known),
    prepared on ctx.anchor_data (EWC's Fisher, SI's importance, anchors, the distillation teacher)."""
    regs = [METHODS[c.method].from_config(c) for c in method_cfgs if c.method not in DATA_METHODS]
    for reg in regs:
        if reg.weight:  # a zero-weight method adds nothing: skip its estimates
            reg.prepare(model, ctx)
    return regs


def memory_report(method_cfgs: Sequence[RetentionMethod], model: Model) -> dict[str, float]:
    """Extra memory each method holds during training, in MB (printed before training)."""
    return {c.method: METHODS[c.method].memory_bytes(model) / 2**20 for c in method_cfgs if c.method in METHODS}


__all__ = ["DATA_METHODS", "METHODS", "Regularizer", "RetentionContext", "build", "memory_report"]
