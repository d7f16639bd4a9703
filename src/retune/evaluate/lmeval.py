"""A bridge to EleutherAI's lm-evaluation-harness (`pip install 'retune[lmeval]'`): its tasks scored on
the model in memory (base, tuned, each stage), folded into retune's rows and paired intervals.

The harness gets the very model object retune holds (a PeftModel too) through its HFLM wrapper, so
nothing is saved or reloaded. Each task keeps its per-document scores (`log_samples`), which is what
retune's paired bootstrap compares before and after; the harness's own stderr is kept beside them.
Hub tasks need their data from the Hugging Face hub; offline, a task YAML of your own over a local
file works (`include_path`, e.g. `dataset_path: json` with `dataset_kwargs: {data_files: ...}`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from retune.config import LmEvalConfig
from retune.errors import UsageError
from retune.types import Model, Tokenizer

INSTALL = "pip install 'retune[lmeval]' (lm-eval==0.4.13)"
# the harness's metric names in the order one is chosen as a task's headline (acc_norm: length-normalised)
PREFERRED = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bleu")


@dataclass
class HarnessScores:
    row: dict[str, float]  # {metric: value, <metric>_stderr: ..., n_test: ...}; the headline metric first
    examples: list[float]  # the headline metric per document


def row_name(task: str) -> str:
    return f"lm_eval/{task}"


def _harness() -> Any:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError(f"the lm-evaluation-harness bridge needs the lm-eval package: {INSTALL}") from None
    return lm_eval, HFLM, TaskManager


def score(model: Model, tok: Tokenizer, spec: LmEvalConfig, batch_size: int) -> HarnessScores:
    """One harness task on the in-memory model."""
    lm_eval, HFLM, TaskManager = _harness()
    for name in ("lm-eval", "lm_eval"):  # its per-request progress and warnings would flood the run's log
        logging.getLogger(name).setLevel(logging.ERROR)
    manager = TaskManager(include_path=spec.include_path, verbosity="ERROR")
    if spec.task not in manager.all_tasks:
        where = f" or in {spec.include_path}" if spec.include_path else "; a task of your own needs include_path (a folder of task YAMLs)"
        raise UsageError(f"lm_eval task '{spec.task}' is not a harness task{where}")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec.task],
            limit=spec.limit,
            num_fewshot=spec.num_fewshot,
            task_manager=manager,
            log_samples=True,
            verbosity="ERROR",
        )
    except (ConnectionError, OSError) as e:
        if "offline" in str(e).lower() or "connect" in str(e).lower() or "hub" in str(e).lower():
            raise UsageError(
                f"lm_eval task '{spec.task}': its data could not be fetched ({type(e).__name__}); offline, point a task YAML of your own "
                "at a local file (retain.lm_eval[i].include_path)"
            ) from None
        raise
    return _fold(spec, out["results"][spec.task], out["samples"][spec.task])


def _fold(spec: LmEvalConfig, result: dict[str, Any], samples: list[dict]) -> HarnessScores:
    """The harness's `results[task]` ({"acc,none": .., "acc_stderr,none": ..}) and per-document samples
    as one retune row, headline metric first."""
    values = {k.split(",")[0]: v for k, v in result.items() if "," in k and isinstance(v, (int, float))}
    names = [k for k in values if not k.endswith("_stderr")]
    metric = spec.metric or next((m for m in PREFERRED if m in names), names[0] if names else None)
    if metric is None or metric not in values:
        raise UsageError(f"lm_eval task '{spec.task}' reports no metric '{metric}' (it reports: {', '.join(names)})")
    row = {metric: float(values[metric]), **{k: float(v) for k, v in values.items() if k != metric}, "n_test": float(len(samples))}
    return HarnessScores(row, [float(s[metric]) for s in sorted(samples, key=lambda s: s["doc_id"])])
