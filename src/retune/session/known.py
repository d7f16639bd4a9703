"""Validation losses the loop already computed, kept with the weights they were computed on.

The tuned model's scoring reports each task's validation loss. When the loop evaluated the very weights
being scored (it evaluates at the final step, or the best evaluated weights were loaded back), that loss
is the same pass over the same examples, so it is reused instead of computed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from retune.types import Model


def fingerprint(model: Model) -> str | None:
    """The trainable weights' bytes, and each frozen weight's identity and in-place version (a merge or
    any other in-place write bumps the version; a module replaced holds new parameters): equal
    fingerprints, equal weights. Not its storage's address: fp32 scoring's round trip (scoring.fp32_weights)
    gives a frozen weight new, bit-identical storage. None where the weights cannot be read here (a
    sharded model's DTensors)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):  # FSDP2 shards: reading them pins storage it resizes
        return None
    h = hashlib.blake2b(digest_size=16)
    try:
        for name, p in model.named_parameters():
            h.update(name.encode())
            if p.requires_grad:
                h.update(p.detach().contiguous().reshape(-1).view(dtype=torch.uint8).numpy().data)
            else:
                h.update(f"{id(p)}:{p._version}:{p.dtype}".encode())
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return None
    return h.hexdigest()


@dataclass
class KnownLosses:
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # weights' fingerprint -> {task: loss}

    def remember(self, model: Model, row: dict, tasks: list[str]) -> None:
        """After an evaluation: `row` is the loop's logged validation row, `tasks` its validation sets."""
        keys = {tasks[0]: "val_loss"} if len(tasks) == 1 else {t: f"val_loss/{t}" for t in tasks}
        losses = {t: float(row[k]) for t, k in keys.items() if k in row}
        weights = fingerprint(model)
        if losses and weights is not None:
            self.seen[weights] = losses

    def of(self, model: Model) -> dict[str, float]:
        """{task: validation loss} when these weights were evaluated (the last, or the best, loaded back), else {}."""
        weights = fingerprint(model) if self.seen else None
        return dict(self.seen.get(weights, {})) if weights is not None else {}
