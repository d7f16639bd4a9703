"""Verifiable rewards for grpo: an answer scored by its task's metric against the reference (tests
run in the sandbox for tasks scored by pass_at_1), plus an optional format reward, and the group-
relative advantages computed from them as TRL computes them."""

from __future__ import annotations

import re

import torch

from retune.evaluate.metrics import per_example, per_example_scores


def metric_rewards(metric: str, answers: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    """Each answer's score in [0, 1] by the task's metric: 0/1 for accuracy, exact_match, syntax_valid
    and pass_at_1 (the record's tests run in the sandbox), ROUGE-L F, sentence chrF / BLEU; for the `code`
    metric the chrF of the code (fences stripped) against the reference."""
    if metric == "code":
        return per_example_scores("code", answers, refs)["chrf"]
    return per_example(metric, answers, refs, records)


def format_rewards(answers: list[str], pattern: str | None, weight: float) -> list[float]:
    if pattern is None or not weight:
        return [0.0] * len(answers)
    rx = re.compile(pattern, re.S)
    return [weight if rx.search(a) else 0.0 for a in answers]


def group_advantages(rewards: torch.Tensor, group: int, scale: bool) -> torch.Tensor:
    """(reward - its group's mean) / (the group's std + 1e-4), std with Bessel's correction as TRL's
    nanstd; rewards (P * group,) are laid out prompt by prompt (TRL's repeat_interleave layout)."""
    g = rewards.view(-1, group)
    adv = (g - g.mean(dim=1, keepdim=True)).view(-1)
    if scale:
        adv = adv / (g.std(dim=1).repeat_interleave(group) + 1e-4)
    return adv
