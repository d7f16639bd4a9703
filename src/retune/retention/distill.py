"""Distillation from the base model (Hinton et al. 2015; as a forgetting remedy, Li & Hoiem 2016 LwF).

    penalty = weight * T^2 * KL(p_base(.|x; T) || p_tuned(.|x; T))     per predicted token

The teacher is the model before fine-tuning. Under LoRA / QLoRA it is the same model with its
adapters switched off (`model.disable_adapter()`): no second copy in memory. For full fine-tuning
it is a frozen copy taken when the method is built.

Where: `new` distils on the current micro-batch (every non-pad position: the tuned model may move
the answer but not the rest of its language); `retain` distils on a rotating micro-batch of the
retention examples, at their response positions (what the model must still say there).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from retune.data.batching import collate, model_inputs, next_token_mask
from retune.data.templates import Encoded
from retune.models.loss import CHUNK, hidden_path
from retune.retention.base import Regularizer
from retune.retention.common import RetentionContext
from retune.types import Model

if TYPE_CHECKING:
    from peft import PeftModel

    from retune.config import DistillConfig


def is_peft(model: Model) -> bool:
    return hasattr(model, "disable_adapter") and bool(getattr(model, "peft_config", None))


def position_logits(model: Model, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """(N, V) logits of the next-token predictions at mask (B, T-1) positions, in fp32."""
    path = hidden_path(model)
    if path is None:
        logits = model(**model_inputs(batch)).logits
        return logits[:, -batch["input_ids"].shape[1] :][:, :-1][mask].float()
    backbone, head = path
    hidden = backbone(**model_inputs(batch)).last_hidden_state
    selected = hidden[:, :-1][mask]  # (N, C)
    return torch.cat([head(selected[s : s + CHUNK]).float() for s in range(0, max(selected.shape[0], 1), CHUNK)])


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum over tokens of T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015, eq. 2
    scaled by T^2 so gradients keep their size as T changes)."""
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    return temperature**2 * (log_t.exp() * (log_t - log_s)).sum()


class Distillation(Regularizer):
    name = "distill"

    def __init__(
        self,
        weight: float,
        temperature: float = 2.0,
        on: tuple[str, ...] = ("retain",),
        batch_size: int = 4,
        samples: int | None = None,
        teacher: Model | None = None,
        positions: str = "all",
    ):
        self.weight, self.temperature, self.on, self.batch_size = weight, temperature, tuple(on), batch_size
        self.samples = samples
        self.data: list[Encoded] = []
        self.pad_id = 0
        self.cursor = 0  # next retention example (checkpointed: resume sees the same batches)
        self.teacher = teacher  # None: the base (adapters off, or a frozen copy made in prepare)
        self.positions = positions  # on new batches: all non-pad positions, or the response only

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> Distillation:
        return cls(cfg.weight, cfg.temperature, tuple(cfg.prompts), cfg.batch_size, cfg.samples)

    def prepare(self, model: Model, ctx: RetentionContext) -> None:
        """The retention prompts (ctx.anchor_data), and the teacher."""
        self.pad_id = ctx.pad_id
        self.data = self._first(ctx.anchor_data)
        if self.teacher is None and not is_peft(model):
            # full fine-tuning: a frozen copy of the starting weights is the teacher
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def end_stage(self, model: Model, ctx: RetentionContext) -> None:
        """The finished stage's examples join the retention prompts (the teacher stays the base)."""
        self.data = self.data + self._first(ctx.anchor_data)

    def _first(self, examples: list[Encoded]) -> list[Encoded]:
        return list(examples[: self.samples] if self.samples else examples)

    @staticmethod
    def memory_bytes(model: Model) -> int:
        if is_peft(model):
            return 0
        return sum(p.numel() * p.element_size() for p in model.parameters())

    @contextmanager
    def _teacher(self, model: Model) -> Iterator[Model]:
        if self.teacher is not None:
            with torch.no_grad():
                yield self.teacher
        else:
            with torch.no_grad(), cast("PeftModel", model).disable_adapter():  # no teacher of its own: a peft model (prepare)
                yield model

    def _kl(self, model: Model, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        with self._teacher(model) as teacher:
            t = position_logits(teacher, batch, mask)
        return kl_sum(position_logits(model, batch, mask), t, self.temperature)

    def batch_penalty(self, model: Model, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor | None:
        if self.weight == 0:
            return None
        total = None
        if "new" in self.on:
            mask = next_token_mask(batch) if self.positions == "all" else batch["labels"][:, 1:] != -100
            total = self._kl(model, batch, mask) * scale
        if "retain" in self.on and self.data:
            rows = [self.data[(self.cursor + j) % len(self.data)] for j in range(self.batch_size)]
            self.cursor = (self.cursor + self.batch_size) % len(self.data)
            rb = collate(rows, self.pad_id)
            mask = rb["labels"][:, 1:] != -100
            # mean KL per retention token, weighted by this micro-batch's share of the step's tokens
            share = float((batch["labels"][:, 1:] != -100).sum()) * scale
            term = self._kl(model, rb, mask) / mask.sum().clamp(min=1) * share
            total = term if total is None else total + term
        return None if total is None else self.weight * total

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state.get("cursor", 0)
