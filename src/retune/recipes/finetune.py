"""The fine-tune recipe: score the base -> attach the adapter -> fit -> score the tuned model -> save.

One run directory (rundir.py): config.yaml, metrics.jsonl, summary.json, adapter/ or model/,
tokenizer/, loss.png, checkpoints/. `resume` continues an interrupted run from its last checkpoint.
"""

from __future__ import annotations

from typing import Any

from retune.config import RetuneConfig
from retune.evaluate.report import print_scores
from retune.plan.budget import announce
from retune.rundir import RunDir
from retune.session import EvalWatch, Session
from retune.session.prepare import run_tasks
from retune.session.retain import print_tradeoff
from retune.session.uncertainty import print_intervals, uncertainty
from retune.train import distributed as dist


def run(cfg: RetuneConfig, resumed: RunDir | None = None, watch: EvalWatch | None = None) -> tuple[RunDir, dict[str, Any]]:
    s = Session.begin(cfg, resumed, watch)
    tasks, objectives = run_tasks(cfg)  # one stage type for every task: sft, or a preference objective
    objective = objectives[0]
    prep = s.prepare(tasks, objectives)
    s.plan = announce(cfg, prep, s.retention.rset)  # the memory plan, before the model loads
    model = s.load_model(labels=prep.tasks[0].labels)
    run_dir = s.open_run()
    base = s.score_base(model)
    train = s.retention.replay(model, prep.epoch_examples, s.autocast)  # replay is data: mixed in here
    model = s.attach(model)
    s.reference(model, objective, *prep.task_train, *prep.task_val)  # dpo's reference: the model as training starts
    regularizers = s.regularizers(model)
    names = [t.name for t in prep.tasks]
    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir.path),
        "task": ", ".join(names),
        "metric": prep.tasks[0].metric if len(names) == 1 else {t.name: t.metric for t in prep.tasks},
        "tasks": s.task_info(model),
    }
    try:
        model, state = s.fit(
            model, train, prep.val_by_task, run_dir.checkpoints, regularizers, resume=resumed is not None, objective=objective
        )
    except KeyboardInterrupt:
        s.write_summary({**summary, "status": f"interrupted; resume with: retune train --resume {run_dir.path}"})
        raise
    if not dist.is_main():  # rank 0 holds the same weights: it scores, saves and summarises
        return run_dir, summary
    s.accel.free_memory()  # Accelerate holds the optimizer (AdamW states: 8 bytes per trainable weight)
    final = s.score(model, "tuned model", "tuned")
    retained = s.score_retained(model)
    s.save_model(model)
    scoring = {t: info["scoring"] for t, info in summary["tasks"].items()}
    summary.update(
        status="completed",
        scoring=next(iter(scoring.values())) if len(scoring) == 1 else scoring,
        base=base,
        final=final,
        retention=retained,
        retention_history=s.retention.history,
        retention_data=s.retained_data(),
        uncertainty=uncertainty(run_dir, names, "base", "tuned"),
        train=s.train_stats([state], model),
    )
    preference = s.preference_scores(model, objective, [e for v in prep.val_by_task.values() for e in v])
    if preference:
        summary["preference"] = preference
    s.finish(summary)
    how = summary["scoring"] if isinstance(summary["scoring"], str) else "per-task"
    print_scores(f"{summary['task']}: base vs tuned ({how} scoring)", base, final)
    u = summary["uncertainty"]
    print_intervals("with 95% intervals (points)", u["base"], u["tuned"], u["change"])
    if retained:
        print_tradeoff([prep.tasks[i].name for i in prep.trained], base, final, retained)
    return run_dir, summary
