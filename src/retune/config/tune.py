"""The `tune:` section: a search over config keys for the best new-task score that forgets least
(`retune tune CONFIG`, recipes/tune.py)."""

from __future__ import annotations

import builtins
import difflib
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from retune.config.sections import _Strict


class ParamSpace(_Strict):
    """How one config key is drawn: exactly one of loguniform, uniform, int, choice."""

    loguniform: tuple[float, float] | None = None
    """[low, high], both > 0: a float drawn uniformly in log space (learning rates, weights)."""
    uniform: tuple[float, float] | None = None
    """[low, high]: a float drawn uniformly."""
    int: tuple[builtins.int, builtins.int] | None = None
    """[low, high]: an integer, both ends included."""
    choice: list[Any] | None = None
    """One of these values (numbers, strings, booleans)."""

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        given = [k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, int, choice (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: give at least one value")
            if not all(v is None or isinstance(v, str | builtins.int | float | bool) for v in self.choice):
                raise ValueError(f"choice: values must be numbers, strings, booleans or null (got {self.choice})")
            return self
        low, high = getattr(self, kind)
        if low >= high:
            raise ValueError(f"{kind}: [low, high] with low < high (got [{low}, {high}])")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform: both ends must be > 0 (got [{low}, {high}])")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None)


Objective = Literal["score", "worst_retained"]


class TuneConfig(_Strict):
    """A search (`retune tune CONFIG`): trials of ordinary runs with config keys drawn from `space`,
    optimising the new task's score against forgetting (a Pareto front; Optuna underneath)."""

    space: dict[str, ParamSpace] = {}
    """Config keys by dotted name, each with how it is drawn: {trainer.lr: {loguniform: [1e-5, 1e-3]},
    adapter.r: {choice: [4, 16, 64]}, retention[0].weight: {loguniform: [0.1, 10]}, trainer.epochs:
    {uniform: [0.5, 2]}}."""
    trials: int = Field(12, ge=1)
    """Trials in the study, all workers and resumes together (completed, pruned and failed count;
    interrupted ones are retried)."""
    timeout: float | None = Field(None, gt=0)
    """Seconds this `retune tune` process starts new trials for; null: until `trials` are done."""
    objectives: list[Objective] = ["score", "worst_retained"]
    """score: maximise the new task's metric (points; the mean over tasks when several);
    worst_retained: maximise the most negative change of any retained task or the probe (points;
    the probe's NLL rise x 100 counts as a drop), i.e. minimise the worst forgetting."""
    max_forgetting: float | None = Field(None, gt=0)
    """A constraint: a trial is feasible when no retained task (or the probe) loses more than this
    many points (the retention gate's notion, trainer.max_forgetting). best.yaml is the best feasible
    trial; the sampler prefers feasible trials."""
    constraint: Literal["point", "significant"] = "point"
    """How max_forgetting is read. point: a retained task's measured drop must not exceed it.
    significant: a trial is infeasible only when the paired 95% interval of a retained task's change
    lies wholly below -max_forgetting (the drop exceeds it beyond doubt); the probe, which has no
    per-example scores, is read as point."""
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    """Optuna's multi-objective sampler: tpe (TPESampler), nsga2 (NSGAIISampler) or random."""
    startup_trials: int = Field(4, ge=0)
    """Trials drawn at random before the tpe sampler models the results."""
    prune: bool = True
    """Stop a trial at an evaluation (trainer.eval_every) when its validation loss is worse than the
    `prune_percentile` of completed trials' validation losses at the same step (a median rule,
    done by retune: Optuna's pruners are single-objective)."""
    prune_percentile: float = Field(50.0, gt=0, lt=100)
    """The percentile a trial's validation loss must beat to go on (50: the median)."""
    prune_after: int = Field(2, ge=1)
    """Completed trials with a validation loss at the step before any trial is pruned there."""
    seed: int | None = None
    """The sampler's seed; default: trainer.seed."""

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError("tune.objectives: score and/or worst_retained, each once")
        for key in self.space:
            check_key(key)
        return self


def key_parts(key: str) -> list[str | int]:
    """retention[0].weight -> ['retention', 0, 'weight'] (data.tasks.0.weight reads the same)."""
    parts: list[str | int] = []
    for p in re.sub(r"\[(\d+)\]", r".\1", key.strip()).split("."):
        parts.append(int(p) if p.isdigit() else p)
    return parts


def check_key(key: str) -> None:
    """A space key must be a config key (lists by index); ValueError with a "did you mean" otherwise."""
    from retune.config.keys import describe_keys

    known = {k.key for k in describe_keys()}
    generic = ".".join("[]" if isinstance(p, int) else p for p in key_parts(key)).replace(".[]", "[]")
    if generic.startswith("tune"):
        raise ValueError(f"tune.space: '{key}' is part of the search itself; search over the run's keys")
    if generic not in known:
        hint = difflib.get_close_matches(generic, sorted(known), n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else "`retune keys` lists every key"
        raise ValueError(f"tune.space: no config key '{key}' ({fix})")
    if any(k.key.startswith(generic + ".") for k in describe_keys()):
        raise ValueError(f"tune.space: '{key}' is a section; search over one of its keys (`retune keys {generic}`)")
