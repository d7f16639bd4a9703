"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from retune.config import TrainerConfig
from retune.types import Model


def total_steps(cfg: TrainerConfig, n_examples: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def make_optimizer(model: Model, cfg: TrainerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters; check adapter.type and adapter.target_modules")
    # no weight decay on biases and norm weights (1-D), the usual AdamW practice
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused AdamW: one kernel per step instead of a dozen per tensor (full fine-tuning updates 135M+ weights)
    fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, steps: int) -> Any:
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * steps)
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
