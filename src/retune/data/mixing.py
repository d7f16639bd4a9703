"""Multi-task mixing: how many examples of each task an epoch holds, and which ones.

An epoch of the mix is a fixed number of examples per task (stratified, so the declared shares hold
exactly in every epoch, not only on average); which examples fill a task's quota is drawn afresh each
epoch from (seed, epoch, task). The order inside the epoch is the loop's usual seeded shuffle.

Strategies (shares p_i, sizes n_i):
- proportional: p_i = n_i / sum n                     (every example once per epoch by default)
- fractions:    p_i = w_i / sum w                     (declared `weight`s, normalised)
- temperature:  p_i = n_i^(1/T) / sum n^(1/T)         (T5, Raffel et al. 2020, sec. 3.5.2; T=1 is proportional)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from retune.errors import UsageError


def shares(sizes: Sequence[int], strategy: str, weights: Sequence[float | None] = (), temperature: float = 2.0) -> list[float]:
    """Each task's share of an epoch (sums to 1)."""
    if strategy == "proportional":
        raw = [float(n) for n in sizes]
    elif strategy == "fractions":
        if len(weights) != len(sizes) or any(w is None for w in weights):
            raise UsageError("data.mixing=fractions needs a weight on every trained task (data.tasks[i].weight)")
        raw = [float(w) for w in weights]  # type: ignore[arg-type]
    elif strategy == "temperature":
        raw = [float(n) ** (1.0 / temperature) for n in sizes]
    else:
        raise UsageError(f"data.mixing: unknown strategy '{strategy}' (proportional, fractions, temperature)")
    total = sum(raw)
    if total <= 0:
        raise UsageError("data.tasks: the training sets are empty; every trained task needs at least one example")
    return [r / total for r in raw]


def _round(shares_: Sequence[float], total: int) -> list[int]:
    """Largest-remainder rounding: counts sum to `total` and each is within 1 of share * total."""
    exact = [s * total for s in shares_]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class MixPlan:
    counts: list[int]  # examples of each task per epoch
    shares: list[float]  # declared shares
    warnings: list[str]


def plan(
    sizes: Sequence[int],
    strategy: str,
    weights: Sequence[float | None] = (),
    temperature: float = 2.0,
    epoch_size: int | None = None,
    oversample: bool = True,
    names: Sequence[str] = (),
) -> MixPlan:
    """Per-task counts for one epoch. A task whose quota exceeds its size is repeated (oversample)
    or capped at its size (then the epoch is shorter and the other tasks' shares grow)."""
    names = list(names) or [f"task {i}" for i in range(len(sizes))]
    if strategy == "auto":
        strategy = "fractions" if any(w is not None for w in weights) else "proportional"
    p = shares(sizes, strategy, weights, temperature)
    counts = _round(p, epoch_size or sum(sizes))
    warnings = []
    for i, (c, n) in enumerate(zip(counts, sizes, strict=True)):
        if c > n:
            if oversample:
                warnings.append(f"{names[i]}: its share needs {c} examples per epoch but it has {n}; each is repeated ~{c / n:.1f}x")
            else:
                warnings.append(f"{names[i]}: its share needs {c} examples per epoch but it has {n}; capped at {n} (data.oversample=false)")
                counts[i] = n
    return MixPlan(counts, p, warnings)


def _perm(n: int, seed: int, epoch: int, task: int, round_: int) -> list[int]:
    g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_009 + task) * 101 + round_)
    return torch.randperm(n, generator=g).tolist()


def epoch_indices(sizes: Sequence[int], counts: Sequence[int], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(task, example index) pairs of one epoch, grouped by task: a fresh seeded draw per epoch. A
    quota above the task's size takes whole permutations first, so no example repeats more than needed."""
    out: list[tuple[int, int]] = []
    for t, (n, c) in enumerate(zip(sizes, counts, strict=True)):
        picked: list[int] = []
        round_ = 0
        while len(picked) < c:
            picked += _perm(n, seed, epoch, t, round_)[: c - len(picked)]
            round_ += 1
        out += [(t, i) for i in picked]
    return out
