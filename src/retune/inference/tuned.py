"""A finished run (or a base model) put to use: re-score it on its config's tasks (`retune eval`),
predict on new records (`retune predict`), generate from a prompt (`retune generate`)."""

from __future__ import annotations

import json
from pathlib import Path

from retune.config import LmEvalConfig, RetuneConfig, load_config
from retune.data.dataset import load_task
from retune.data.templates import Formatter
from retune.evaluate.forgetting import score_retained
from retune.evaluate.report import print_scores
from retune.evaluate.task_eval import score_task
from retune.io import write_text
from retune.models.load import load_base, load_tokenizer
from retune.models.resolve import resolve_base
from retune.models.tasks import task_type_of
from retune.rundir import RunDir, is_run_dir
from retune.session import Session, load_run, make_accelerator, setup_torch
from retune.session.prepare import prepare_data
from retune.session.retain import Retention
from retune.session.uncertainty import intervals, print_intervals
from retune.types import Model, Tokenizer


def evaluate(target: str, overrides: list[str] | None = None, lm_eval: list[LmEvalConfig] | None = None) -> dict:
    """Re-score a run directory's tuned model, or a config's base model, on the config's tasks and
    what it must retain (retain: tasks, lm_eval tasks, the probe), each with its 95% interval.
    `lm_eval`: harness tasks scored in place of the config's retain.lm_eval."""
    run = RunDir(Path(target)) if is_run_dir(target) else None
    if run is not None:
        cfg, model, tok = load_run(run, overrides)
    else:
        cfg = load_config(target, overrides)
        setup_torch(cfg)
        model_path = resolve_base(cfg.model.base)
        model, tok = load_base(cfg, model_path), load_tokenizer(model_path, cfg.model)
    if lm_eval is not None:
        cfg = cfg.model_copy(update={"retain": cfg.retain.model_copy(update={"lm_eval": lm_eval})})
    s = Session(cfg, "", accelerator=make_accelerator(cfg))
    prep = s.prep = prepare_data(cfg, tok, cfg.data.task_list())
    scores: dict = {}
    examples: dict[str, dict[str, list[float]]] = {}
    for task, val in zip(prep.tasks, prep.task_val, strict=True):
        scored = score_task(model, tok, prep.fmt, task, val, cfg.eval, s.autocast)
        scores[task.name], examples[task.name] = scored.row, scored.examples
    if not task_type_of(model).has_lm_head:  # the probe needs an LM head (a run's config.yaml may spell out the default)
        cfg = cfg.model_copy(update={"retain": cfg.retain.model_copy(update={"probe": None})})
    retained = score_retained(model, tok, prep.fmt, Retention.load(cfg, tok, prep.fmt).rset, cfg.eval, s.autocast)
    for name, row in retained.rows.items():  # the retain: tasks and the probe, scored the same way
        scores[name] = {**row, "role": "retained"}
        # retained tasks: every metric per example; the probe and harness tasks: their headline metric
        examples[name] = retained.scored[name].examples if name in retained.scored else {next(iter(row)): retained.examples[name]}
    ivals = intervals(examples)  # bootstrap resamples: computed once, stored and printed
    for name, per in ivals.items():
        scores[name]["intervals"] = per
    if run is not None:
        run.write_json("eval.json", scores)
    plain = {k: {m: v for m, v in row.items() if m not in ("intervals", "role")} for k, row in scores.items()}
    print_scores(", ".join(scores), None, plain)
    print_intervals("with 95% intervals (points; nll: nats)", None, ivals, {})
    return scores


def predict(run_dir: str, input_path: str, output_path: str | None) -> list[dict]:
    from retune.data.readers import read_records
    from retune.data.templates import check_fields, template_fields
    from retune.evaluate.task_eval import predict as predict_task

    cfg, model, tok = load_run(RunDir.open(run_dir))
    task = load_task(cfg.data, cfg.eval)
    records = read_records(input_path)
    response_fields = set(template_fields(task.template.response))
    # unseen data has no answers: fill response fields with "" so the prompt renders
    rows = [{**{f: "" for f in response_fields}, **r} for r in records]
    check_fields(task.template, rows, input_path)
    fmt = Formatter(tok, cfg.data)
    pred = predict_task(model, tok, fmt, task, rows, cfg.eval, make_accelerator(cfg).autocast)
    out = [{**r, "prediction": p} for r, p in zip(records, pred.predictions, strict=True)]
    if output_path:
        write_text(output_path, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out))
    return out


def load_target(target: str) -> tuple[RetuneConfig, Model, Tokenizer]:
    """(config, model, tokenizer) of a run directory's tuned model, or of a base model by name/folder."""
    if is_run_dir(target):
        return load_run(RunDir(Path(target)))
    cfg = RetuneConfig.model_validate({"model": {"base": target}})
    path = resolve_base(cfg.model.base)
    return cfg, load_base(cfg, path), load_tokenizer(path, cfg.model)


def generate_text(run_dir: str, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    from retune.evaluate.scoring import generate

    cfg, model, tok = load_target(run_dir)
    fmt = Formatter(tok, cfg.data)
    autocast = make_accelerator(cfg).autocast
    return generate(
        model, tok, [fmt.prompt_text(prompt)], max_new_tokens, 1, autocast, add_special_tokens=not fmt.chat, temperature=temperature
    )[0]
