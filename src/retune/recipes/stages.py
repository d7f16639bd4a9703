"""The stages recipe: fine-tune on a sequence of tasks (task 1, then task 2, ...) in one run.

After each stage every task of the sequence is scored, which fills the accuracy matrix R[i][j]
(score on task j after stage i, in points); from it average accuracy, backward transfer (BWT,
negative = forgetting) and forward transfer (FWT). Each stage is an ordinary fit of the session:
the retention gate (trainer.max_forgetting, select: retained) watches it and rolls it back, and
`--nproc`, trackers, every task type and loss_weight apply as in one run. Retention methods carry
across stages through their `end_stage` (online EWC and SI consolidate, L2-SP re-anchors,
distillation adds the stage's examples) and replay keeps a buffer of every earlier stage's examples.

Run directory: config.yaml, metrics.jsonl, summary.json (with `stages`), stage-<i>/ (checkpoints
and the stage's trainable weights), matrix.png.
"""

from __future__ import annotations

from typing import Any

from retune.config import RetuneConfig
from retune.data.replay import ReplayBuffer, replay_mix
from retune.evaluate.forgetting import plot_matrix, primary, sequence_metrics
from retune.evaluate.report import console
from retune.plan.budget import announce
from retune.rundir import RunDir
from retune.session import EvalWatch, Session
from retune.session.prepare import run_tasks
from retune.session.retain import print_tradeoff
from retune.session.uncertainty import uncertainty
from retune.train import distributed as dist
from retune.train.checkpoint import save_weights


def run(cfg: RetuneConfig, watch: EvalWatch | None = None) -> tuple[RunDir, dict[str, Any]]:
    s = Session.begin(cfg, watch=watch)
    tasks, objectives = run_tasks(cfg)  # each stage's task and type: sft, dpo, ...
    prep = s.prepare(tasks, objectives)
    s.plan = announce(cfg, prep, s.retention.rset)  # the memory plan, before the model loads
    names = [t.name for t in prep.tasks]
    model = s.load_model(labels=prep.tasks[0].labels)
    run_dir = s.open_run()
    base = s.score_base(model)
    baseline = [primary(n, base[n])[1] for n in names] if base else []
    model = s.attach(model)
    regularizers = s.regularizers(model)
    replay = next((m for m in cfg.retention if m.method == "replay"), None)
    buffer = ReplayBuffer(replay.samples if replay else 0)
    if replay is not None:  # the retain: tasks' examples (or the base's own answers) start the buffer
        buffer.by_task["retain"] = s.retention.replay_buffer(model, s.autocast)

    R: list[list[float]] = []
    scores: list[dict] = []
    states = []
    preference: dict[str, Any] = {}
    for i, (stage, task, objective) in enumerate(zip(cfg.stages, prep.tasks, objectives, strict=True)):
        console.print(f"[bold]stage {i + 1}/{len(names)}: {task.name} ({objective.name})")
        train = prep.task_train[i]
        s.reference(model, objective, train, prep.task_val[i])  # dpo's reference: the model this stage starts from
        data = replay_mix(train, buffer.examples(), replay.share, cfg.trainer.seed + i) if replay and len(buffer) else train
        stage_dir = run_dir.stage(i + 1)
        model, state = s.fit(
            model,
            data,
            {task.name: prep.task_val[i]},
            stage_dir / "checkpoints",
            regularizers,
            stage.trainer_for(cfg.trainer),
            stage=i + 1,
            label=task.name,
            objective=objective,
        )
        states.append(state)
        if dist.is_main() and objective.metric_names:
            preference[task.name] = s.preference_scores(model, objective, prep.task_val[i], stage=i + 1)
        if dist.is_main():
            save_weights(stage_dir / "trainable.safetensors", model)  # each stage checkpointed
        row = s.score(model, f"after {task.name}", f"stage-{i + 1}")  # rank 0; the others wait at the barrier
        dist.barrier()
        if row:
            scores.append(row)
            R.append([primary(n, row[n])[1] for n in names])
            s.log({"event": "stage_done", "stage": i + 1, "task": task.name, "R_row": R[-1]})
        for reg in regularizers:  # carry the retention methods into the next stage (on every rank)
            reg.end_stage(model, s.retention_context(train))
        if replay is not None:
            buffer.add(task.name, train)

    summary: dict[str, Any] = {"status": "completed", "run_dir": str(run_dir.path), "task": ", ".join(names)}
    if not dist.is_main():
        return run_dir, summary
    retained = s.score_retained(model, f"stage-{len(names)}")
    s.save_model(model)
    seq = sequence_metrics(R, baseline)
    plot_matrix(R, names, run_dir.path / "matrix.png")
    summary.update(
        base=base,
        final=scores[-1],
        retention=retained,
        retention_history=s.retention.history,
        retention_data=s.retained_data(),
        uncertainty=uncertainty(run_dir, names, "base", f"stage-{len(names)}"),
        stages={"tasks": names, "R": R, "baseline": baseline, **seq, "matrix_png": "matrix.png", "changes": stage_changes(run_dir, names)},
        train=s.train_stats(states, model),
    )
    if preference:
        summary["preference"] = preference
    s.finish(summary)
    print_matrix(names, R, baseline, seq)
    if retained:
        print_tradeoff([names[-1]], base, scores[-1], retained)
    return run_dir, summary


def stage_changes(run_dir: RunDir, names: list[str]) -> list[dict[str, Any]]:
    """What each stage after the first changed: every task's paired change (with its 95% interval) from
    the scores after the stage before to the scores after it, e.g. a dpo stage over the sft stage."""
    out = []
    for i in range(1, len(names)):
        change = uncertainty(run_dir, names, f"stage-{i}", f"stage-{i + 1}")["change"]
        out.append({"stage": i + 1, "over": i, "change": change})
    return out


def print_matrix(names: list[str], R: list[list[float]], baseline: list[float], seq: dict) -> None:
    from rich.table import Table

    table = Table(title="R[i][j]: score on task j after stage i (points)")
    table.add_column("after")
    for n in names:
        table.add_column(n, justify="right")
    if baseline:
        table.add_row("base", *[f"{b:.1f}" for b in baseline])
    for n, row in zip(names, R, strict=True):
        table.add_row(n, *[f"{v:.1f}" for v in row])
    console.print(table)

    def sign(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    acc, bwt, fwt = seq["average_accuracy"], sign(seq["backward_transfer"]), sign(seq["forward_transfer"])
    console.print(f"average accuracy {acc:.2f}, backward transfer {bwt}, forward transfer {fwt}")
