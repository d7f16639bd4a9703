"""What the retention methods share: the trainable parameters, and the data a method anchors on."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

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
