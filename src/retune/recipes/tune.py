"""The search recipe (`retune tune CONFIG`): trials of ordinary runs, each with config keys drawn from
`tune.space`, optimising the new task's score against the worst retained change (a Pareto front).

    check the space (exit 2 before any trial) -> open the study -> until tune.trials:
        claim a trial -> draw its values -> plan its memory -> train it (the ordinary `retune train`
        run, in <tune dir>/trial-<n>, watched by the pruner) -> tell the study its objectives
    -> tune.json, front.png, best.yaml, the front as a table

`train` is the train command's dispatcher (fine-tune or stages), passed in by the CLI: a recipe
never imports another. Mechanism (space, study, pruning, report) lives in retune.search.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from retune.config import RetuneConfig
from retune.errors import UsageError
from retune.evaluate.report import console
from retune.io import write_json
from retune.search import report as rep
from retune.search.space import base_raw, check_space, suggest, trial_config
from retune.search.study import claim, counted, interrupt, open_study, pruning_watch, tune_dir
from retune.session import EvalWatch

Train = Callable[[RetuneConfig, EvalWatch | None], tuple[Path, dict[str, Any]]]


def run(
    cfg: RetuneConfig, train: Train, storage: str | None = None, resume: bool = False, budget_mb: float | None = None
) -> dict[str, Any]:
    tune = cfg.tune
    raw = base_raw(cfg)
    check_space(raw, tune)  # every range end and choice validates: bad entries exit 2 here
    folder = tune_dir(cfg)
    study = open_study(cfg, tune, folder, storage, resume)
    url = storage or f"sqlite:///{folder / 'study.db'}"
    console.print(f"tune directory: {folder}; study {study.study_name} in {url}")
    t0 = time.monotonic()
    while tune.timeout is None or time.monotonic() - t0 < tune.timeout:
        trial = claim(study, tune.trials)
        if trial is None:
            break
        run_trial(study, trial, raw, cfg, folder, train, budget_mb)
        free_trial_memory()
        report = rep.summarise(study, tune.objectives, url)
        console.print(f"[bold]tune: {len(counted(study))}/{tune.trials} trials: {rep.counts(report)}")
    report = rep.summarise(study, tune.objectives, url)
    rep.write_outputs(folder, report, best_config(report, cfg))
    rep.print_front(report)
    console.print(f"tune.json, front.png{', best.yaml' if report['best'] is not None else ''} in {folder}")
    try:
        from retune.report.build import build  # plotly is imported only where a report is written

        console.print(f"report: {build([str(folder)])}")
    except Exception as e:  # the search's results are saved; the report can be built again from them
        console.print(f"[yellow]report.html not written ({type(e).__name__}: {e}); retry with: retune report {folder}")
    return report


def run_trial(study: Any, trial: Any, raw: dict, cfg: RetuneConfig, folder: Path, train: Train, budget_mb: float | None) -> None:
    """One trial, told to the study as COMPLETE (its objectives), PRUNED or FAIL (with its reason)."""
    import optuna
    from optuna.trial import TrialState

    params = suggest(trial, cfg.tune.space)
    run_dir = folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    console.print(f"[bold]trial {trial.number}: {shown}")
    try:
        tcfg = trial_config(raw, params, {"dir": str(folder), "name": run_dir.name})
        check_memory(tcfg, budget_mb)
        with named_run_dir(run_dir):
            _, summary = train(tcfg, pruning_watch(study, trial, cfg.tune))
    except optuna.TrialPruned as e:
        _end(study, trial, run_dir, TrialState.PRUNED, f"pruned: {e}")
    except KeyboardInterrupt:
        interrupt(study, trial.number, params)
        raise
    except Exception as e:  # failures are data (out of memory, a NaN loss, a bad drawn value): the study goes on
        _end(study, trial, run_dir, TrialState.FAIL, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    else:
        out = rep.outcome(summary)
        mf = cfg.tune.max_forgetting
        over = rep.excess(out, mf, cfg.tune.constraint) if mf is not None else None
        trial.set_user_attr("outcome", out)
        trial.set_user_attr("excess", over)
        trial.set_user_attr("feasible", over is None or over <= 0)
        study.tell(trial, [out[o] for o in cfg.tune.objectives])


def free_trial_memory() -> None:
    """Trials run one after another in this process. What the last one held is garbage once it ends
    (models sit in reference cycles until collected), but the malloc keeps the freed blocks, and the
    next trial's tensors (another method, rank or length) do not fit them all: on examples/tune.yaml
    the process started each trial from 4.6 GB after its full fine-tuning trials and peaked at 5.0 GB,
    against 4.0 GB for one full trial alone. So the search hands that memory back between trials."""
    import gc

    from retune import allocator

    gc.collect()
    allocator.release()


def _end(study: Any, trial: Any, run_dir: Path, state: Any, reason: str) -> None:
    console.print(f"[yellow]trial {trial.number} {state.name.lower()}: {reason.removeprefix('pruned: ')}")
    trial.set_user_attr("reason", reason)
    if run_dir.exists():  # the run directory says why it stopped
        old = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        write_json(run_dir / "summary.json", {**(old or {}), "run_dir": str(run_dir), "status": reason})
    study.tell(trial, state=state)


def check_memory(cfg: RetuneConfig, budget_mb: float | None) -> None:
    """`retune plan`'s peak against --budget (default: this machine's memory): a trial that cannot fit
    fails with the reason instead of crashing the search."""
    from retune import plan as planner

    budget = budget_mb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    try:
        peak = planner.estimate(cfg, planner.model_shape(cfg)).peak_mb
    except UsageError:
        raise
    except Exception:  # a model the planner cannot read: the trial runs unplanned
        return
    if peak > budget:
        raise MemoryError(f"retune plan predicts a peak of {peak:,.0f} MB, over the {budget:,.0f} MB budget; skipped")


@contextlib.contextmanager
def named_run_dir(path: Path) -> Iterator[None]:
    """The trial's run directory by name (RunDir.create honours RETUNE_RUN_DIR, as under --nproc)."""
    old = os.environ.get("RETUNE_RUN_DIR")
    os.environ["RETUNE_RUN_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RETUNE_RUN_DIR", None)
        else:
            os.environ["RETUNE_RUN_DIR"] = old


def best_config(report: dict[str, Any], cfg: RetuneConfig) -> dict[str, Any] | None:
    """best.yaml: the best trial's config.yaml as it ran, writing its runs where the searched config did."""
    if report["best"] is None:
        return None
    row = next(t for t in report["trials"] if t["number"] == report["best"])
    best = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
    best.pop("tune", None)
    best["output"] = {**best.get("output", {}), "dir": cfg.output.dir, "name": f"{cfg.output.name or 'run'}-best"}
    return best
