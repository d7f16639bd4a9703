"""Using a model after (or without) training: load a run directory's tuned model or a base model,
re-score it on its config's tasks (`retune eval`), predict on new records (`retune predict`),
generate from a prompt (`retune generate`, `retune chat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retune.config import RetuneConfig, load_config
from retune.data.dataset import load_task
from retune.data.templates import Formatter
from retune.errors import UsageError
from retune.evaluate.report import print_scores
from retune.io import write_json, write_text
from retune.models.load import load_base, load_tokenizer, load_trained
from retune.models.resolve import resolve_base
from retune.run import evaluate_tasks, make_accelerator, prepare_data, setup_torch


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.yaml").exists()


def load_run(run_dir: Path, overrides: list[str] | None = None) -> tuple[RetuneConfig, Any, Any]:
    cfg = load_config(run_dir / "config.yaml", overrides)
    setup_torch(cfg)
    model = load_trained(run_dir, cfg)
    tok_dir = run_dir / "tokenizer" if (run_dir / "tokenizer").exists() else resolve_base(cfg.model.base)
    return cfg, model, load_tokenizer(str(tok_dir), cfg.model)


def evaluate(target: str, overrides: list[str] | None = None) -> dict:
    """Re-score a run directory's tuned model, or a config's base model, on the config's task."""
    if is_run_dir(target):
        cfg, model, tok = load_run(Path(target), overrides)
    else:
        cfg = load_config(target, overrides)
        setup_torch(cfg)
        model_path = resolve_base(cfg.model.base)
        model, tok = load_base(cfg, model_path), load_tokenizer(model_path, cfg.model)
    prep = prepare_data(cfg, tok=tok)
    scores = evaluate_tasks(model, prep, make_accelerator(cfg).autocast)
    if is_run_dir(target):
        write_json(Path(target) / "eval.json", scores)
    print_scores(", ".join(scores), None, scores)
    return scores


def predict(run_dir: str, input_path: str, output_path: str | None) -> list[dict]:
    from retune.data.readers import read_records
    from retune.data.templates import check_fields, template_fields
    from retune.evaluate.task_eval import predict as predict_task

    if not is_run_dir(run_dir):
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg, model, tok = load_run(Path(run_dir))
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
        import json

        write_text(output_path, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out))
    return out


def load_target(target: str) -> tuple[RetuneConfig, Any, Any]:
    """(config, model, tokenizer) of a run directory's tuned model, or of a base model by name/folder."""
    if is_run_dir(target):
        return load_run(Path(target))
    cfg = RetuneConfig.model_validate({"model": {"base": target}})
    path = resolve_base(cfg.model.base)
    return cfg, load_base(cfg, path), load_tokenizer(path, cfg.model)


def generate_text(run_dir: str, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    from retune.evaluate.scoring import generate

    cfg, model, tok = load_target(run_dir)
    fmt = Formatter(tok, cfg.data)
    kwargs = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
    return generate(
        model, tok, [fmt.prompt_text(prompt)], max_new_tokens, 1, make_accelerator(cfg).autocast, add_special_tokens=not fmt.chat, **kwargs
    )[0]
