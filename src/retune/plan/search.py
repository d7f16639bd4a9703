"""A search's plan (`retune plan` on a config with `tune:`): the largest trial the space allows.

Each trial of `retune tune` is an ordinary run, planned before it trains (search/study.py skips one
over the budget). What a user asks before starting the search is whether its largest trial fits, so the
plan takes every combination of each key's choices and range ends (a key's memory does not fall
between its ends), up to MAX_TRIALS, and keeps the one with the highest peak. Trials that change no
data, batch or scoring key share one reading of the data. The search runs its trials in one process,
and each leaves a little behind (RESIDUE_PER_TRIAL_MB).
"""

from __future__ import annotations

import itertools
from typing import Any

from retune.config import RetuneConfig
from retune.plan.estimate import Plan, estimate, read_data
from retune.plan.shapes import model_shape

MAX_TRIALS = 64  # beyond: each key's values with the others at their first (search/space.py corners)
# Trials run one after another in one process, and each leaves a little behind even after the search
# hands freed memory back (recipes/tune.py free_trial_memory): the process's RSS after that release went
# 1,132 -> 1,160 -> 1,173 -> 1,178 -> 1,181 -> 1,268 MB over trials 0-5 of examples/tune.yaml (a 6-trial
# run at d934772, tcmalloc), 27 MB a trial. The largest trial is planned as if it ran last.
RESIDUE_PER_TRIAL_MB = 27.0
DATA_KEYS = (
    "data",
    "eval",
    "retain",
    "stages",
    "objective",
    "trainer.batch_size",
    "trainer.grad_accum",
    "trainer.max_steps",
    "trainer.epochs",
)


def combinations(cfg: RetuneConfig) -> list[dict[str, Any]]:
    """Every combination of the space's choices and range ends, or its corners past MAX_TRIALS."""
    from retune.search.space import corners

    space = cfg.tune.space
    values = {k: list(p.choice) if p.choice is not None else list(getattr(p, p.kind)) for k, p in space.items()}
    count = 1
    for v in values.values():
        count *= len(v)
    if count > MAX_TRIALS:
        return corners(space)
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def largest_trial(cfg: RetuneConfig) -> tuple[Plan, RetuneConfig]:
    """(the plan of the trial with the highest peak, that trial's config); a note names its values."""
    from retune.search.space import base_raw, trial_config

    raw = base_raw(cfg)
    data: dict[str, Any] = {}
    best: tuple[Plan, dict[str, Any], RetuneConfig] | None = None
    trials = combinations(cfg)
    for params in trials:
        tcfg = trial_config(raw, params)
        key = str(sorted((k, v) for k, v in params.items() if k.startswith(DATA_KEYS)))
        if key not in data:
            data[key] = read_data(tcfg)
        batch, jobs = data[key]
        p = estimate(tcfg, model_shape(tcfg), batch=batch, jobs=jobs)
        if best is None or p.peak_mb > best[0].peak_mb:
            best = (p, params, tcfg)
    assert best is not None  # a tune: section has at least one key (config validation)
    plan, params, tcfg = best
    left = RESIDUE_PER_TRIAL_MB * (cfg.tune.trials - 1)
    plan = plan.with_phases({k: v + left for k, v in plan.phases.items()})
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    plan.notes.insert(
        0,
        f"search: the largest of {len(trials)} trials planned ({shown}), after {cfg.tune.trials - 1} earlier trials in the same "
        f"process (+{left:,.0f} MB they leave); each trial is planned again before it trains",
    )
    return plan, tcfg
