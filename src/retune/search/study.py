"""The Optuna study behind `retune tune`: its storage, its sampler, trial bookkeeping and pruning.

Storage: sqlite:///<tune dir>/study.db unless --storage names another RDB URL (postgresql://... for
workers on several machines). Every worker runs trials until the study holds `tune.trials` of them.

Pruning: Optuna's pruners (trial.report / should_prune) are single-objective, so retune prunes by
itself with the median rule: a trial's validation loss at an evaluation step is compared with the
validation losses that completed trials logged at the same step (kept as the trial attribute
`val_loss`), and the trial stops when it is worse than their `prune_percentile`.

Interrupted trials: a trial stays RUNNING in the storage when its process is killed. A worker on the
same machine that opens the study (--resume) marks such a trial FAIL with reason "interrupted" (its
process is gone) and queues its values again, so no trial is lost and none counts twice.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retune.config import RetuneConfig, TuneConfig
from retune.errors import UsageError
from retune.evaluate.report import console
from retune.session import EvalWatch

DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {"score": "maximize", "worst_retained": "maximize"}
INTERRUPTED = "interrupted"


def tune_dir(cfg: RetuneConfig) -> Path:
    """<output.dir>/<output.name>-tune: the same folder on every resume (no timestamp)."""
    return Path(cfg.output.dir) / f"{cfg.output.name or 'run'}-tune"


def study_name(cfg: RetuneConfig) -> str:
    return cfg.output.name or "tune"


def _storage(folder: Path, url: str | None) -> Any:
    import optuna

    url = url or f"sqlite:///{(folder / 'study.db').resolve()}"
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}  # workers wait for SQLite's lock
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # a wrong URL or an unreachable server: say which
        raise UsageError(f"--storage {url}: cannot open the study storage ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _sampler(tune: TuneConfig, seed: int, joining: bool) -> Any:
    import optuna

    # A worker that joins a running study draws its own random numbers (else two workers started
    # together propose the same first values); the one that creates it is reproducible.
    seed = seed + os.getpid() if joining else seed

    def constraints(t: Any) -> list[float]:  # <= 0: feasible (recipes/tune.py sets `excess`)
        over = t.user_attrs.get("excess")
        return [over if over is not None else 0.0]

    cons = constraints if tune.max_forgetting is not None else None
    if tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=cons)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials, constraints_func=cons)


def open_study(cfg: RetuneConfig, tune: TuneConfig, folder: Path, url: str | None, resume: bool) -> Any:
    """The study: created (without --resume) or continued / joined (with it); stale trials retried."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url is None:
        folder.mkdir(parents=True, exist_ok=True)  # the SQLite file lives in it
    storage = _storage(folder, url)
    folder.mkdir(parents=True, exist_ok=True)
    name = study_name(cfg)
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    where = url or str(folder / "study.db")
    if exists and not resume:
        raise UsageError(f"study '{name}' already exists in {where}: continue or join it with --resume, or set output.name")
    if resume and not exists:
        raise UsageError(f"no study '{name}' in {where} to resume: start it without --resume")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=[DIRECTIONS[o] for o in tune.objectives],
        sampler=_sampler(tune, tune.seed if tune.seed is not None else cfg.trainer.seed, joining=exists),
        load_if_exists=True,
    )
    study.set_user_attr("objectives", list(tune.objectives))
    retry_interrupted(study)
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_interrupted(study: Any) -> None:
    """RUNNING trials of dead processes on this machine: FAIL (reason interrupted), queued again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _alive(int(t.user_attrs.get("pid", 0))):
            continue  # another machine's, or a live worker's
        interrupt(study, t.number, t.params)


def interrupt(study: Any, number: int, params: dict[str, Any]) -> None:
    """Trial `number` did not finish (Ctrl-C, a kill): FAIL, listed as interrupted, its values queued again."""
    from optuna.trial import TrialState

    study.set_user_attr(INTERRUPTED, sorted({*study.user_attrs.get(INTERRUPTED, []), number}))
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params, user_attrs={"retry_of": number}, skip_if_exists=False)
    console.print(f"[yellow]trial {number} was interrupted; its values are queued again")


def counted(study: Any) -> list[Any]:
    """The trials that count towards tune.trials: all but the interrupted ones (they are retried) and
    the queued ones (study.ask() starts them first)."""
    from optuna.trial import TrialState

    skip = set(study.user_attrs.get(INTERRUPTED, []))
    return [t for t in study.get_trials(deepcopy=False) if t.number not in skip and t.state != TrialState.WAITING]


def claim(study: Any, trials: int) -> Any | None:
    """A new trial, or None once the study holds `trials` (this worker's and every other's)."""
    if len(counted(study)) >= trials:
        return None
    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return trial


class Diverged(Exception):
    """The validation loss is not a finite number: the trial failed."""


def pruning_watch(study: Any, trial: Any, tune: TuneConfig) -> EvalWatch:
    """The session's evaluation watcher for one trial: records its validation losses by step and
    raises optuna.TrialPruned when one is worse than the completed trials' percentile there."""
    import optuna
    from optuna.trial import TrialState

    losses: dict[str, float] = {}

    def watch(step: int, val: float | None) -> None:
        if val is None:
            return
        if not math.isfinite(val):
            raise Diverged(f"validation loss {val} at step {step}")
        losses[str(step)] = val
        trial.set_user_attr("val_loss", dict(losses))
        if not tune.prune:
            return
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [v for t in done if (v := t.user_attrs.get("val_loss", {}).get(str(step))) is not None]
        if len(others) < tune.prune_after:
            return
        bar = float(np.percentile(others, tune.prune_percentile))
        if val > bar:
            raise optuna.TrialPruned(
                f"step {step}: validation loss {val:.4f} > {bar:.4f}, "
                f"the {tune.prune_percentile:g}th percentile of {len(others)} completed trials"
            )

    return watch
