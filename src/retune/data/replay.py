"""Replay: earlier data mixed into training at a declared share of the final mix (a mixing source,
built on data.mixing), and self-replay: the base model's own answers to earlier prompts, for when
the original answers are not available.

The buffer carries across stages: each stage adds up to `samples` examples of its own task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from retune.data import mixing
from retune.data.templates import Encoded, Formatter
from retune.types import Autocast, Model

if TYPE_CHECKING:
    from retune.config import TemplateConfig

T = TypeVar("T")


def replay_mix(new: list[T], buffer: list[T], share: float, seed: int) -> list[T]:
    """`new` once each, plus buffer examples so that they are `share` of the result (exact up to
    rounding: k = share * n / (1 - share)). Which buffer examples is a seeded draw; repeated only if
    the buffer is smaller than k. The loop shuffles the result like any training set."""
    if not buffer or share <= 0:
        return list(new)
    total = round(len(new) / (1.0 - share))
    p = mixing.plan([len(new), len(buffer)], "fractions", weights=[1.0 - share, share], epoch_size=total, oversample=True)
    counts = [len(new), total - len(new)]  # every new example exactly once
    del p  # the plan's shares are the declared ones; counts fix the new task's at its size
    picked = mixing.epoch_indices([len(new), len(buffer)], counts, seed, 0)
    return [new[i] if t == 0 else buffer[i] for t, i in picked]


class ReplayBuffer:
    """Examples of earlier tasks (encoded), kept across stages, at most `per_task` of each."""

    def __init__(self, per_task: int):
        self.per_task = per_task
        self.by_task: dict[str, list[Encoded]] = {}

    def add(self, task: str, examples: list[Encoded]) -> None:
        self.by_task[task] = list(examples[: self.per_task])

    def examples(self) -> list[Encoded]:
        return [e for rows in self.by_task.values() for e in rows]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_task.values())


def self_replay(
    model: Model, fmt: Formatter, template: TemplateConfig, records: list[dict], max_new_tokens: int, batch_size: int, autocast: Autocast
) -> list[Encoded]:
    """Each record's prompt with the base model's own greedy answer in place of the reference, encoded
    for training: replaying them keeps the base behaviour without the original answers."""
    from retune.data.templates import render
    from retune.evaluate.scoring import generate

    rendered = [render(template, r) for r in records]
    prompts = [fmt.prompt_text(p, system) for p, _, system in rendered]
    answers = generate(model, fmt.tok, prompts, max_new_tokens, batch_size, autocast, add_special_tokens=not fmt.chat)
    return [fmt.encode(p, a.strip(), system, where="self-replay") for (p, _, system), a in zip(rendered, answers, strict=True) if a.strip()]
