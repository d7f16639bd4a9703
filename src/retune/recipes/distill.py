"""`retune distill`: knowledge distillation in the seed's other sense, a fine-tuned teacher into a
smaller student (Hinton et al. 2015).

The student is the teacher's own architecture with fewer layers, initialised from the teacher
(evenly spaced layers, first and last kept; embeddings, final norm and head copied), or any smaller
model that shares the tokenizer. It trains on the teacher's task data with
    loss = CE(student, reference) + weight * T^2 * KL(teacher || student)   at the response tokens
(the KL term is the Distillation regularizer with the tuned teacher in place of the base), then
the student and the teacher are scored on the same test set; sizes and scores are reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from retune.config import RetuneConfig
from retune.data.dataset import load_task
from retune.data.templates import Formatter
from retune.errors import UsageError
from retune.evaluate.report import console
from retune.evaluate.task_eval import evaluate_task
from retune.io import replace_dir, staging_dir, write_json
from retune.models.load import load_base, load_tokenizer
from retune.models.resolve import resolve_base
from retune.retention.distill import Distillation
from retune.rundir import RunDir
from retune.session import load_run, make_accelerator
from retune.session.prepare import encode_task
from retune.train.loop import Hooks, fit
from retune.types import Model, Tokenizer

if TYPE_CHECKING:
    from peft import PeftModel


def layer_indices(n_layers: int, keep: int) -> list[int]:
    """Evenly spaced layers, first and last included."""
    if not 1 <= keep <= n_layers:
        raise UsageError(f"--layers {keep}: the teacher has {n_layers} layers; keep between 1 and {n_layers}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def shrink(teacher: Model, keep: int) -> Model:
    """A copy of a decoder LM keeping `keep` of its layers (a Llama-like `model.layers` list)."""
    import copy

    student = copy.deepcopy(teacher).float()
    layers = student.model.layers
    idx = layer_indices(len(layers), keep)
    student.model.layers = torch.nn.ModuleList([layers[i] for i in idx])
    for new_i, layer in enumerate(student.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_i  # the KV cache is indexed by position in the list
    student.config.num_hidden_layers = len(idx)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in idx]
    return student.requires_grad_(True)


def size_mb(model: Model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def make_student(cfg: RetuneConfig, teacher: Model, tok: Tokenizer, layers: int | None, student_model: str | None) -> Model:
    """The teacher with `layers` of its layers, or another model that shares its tokenizer."""
    if layers is not None:
        return shrink(teacher, layers)
    assert student_model is not None
    scfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": student_model})})
    spath = resolve_base(student_model)
    if load_tokenizer(spath, scfg.model).get_vocab() != tok.get_vocab():
        raise UsageError(f"--student {student_model} does not share the teacher's tokenizer (distillation compares token distributions)")
    return load_base(scfg, spath, trainable_full=True).requires_grad_(True)


def describe(model: Model, scores: dict[str, float], **extra: object) -> dict[str, Any]:
    return {"params": sum(p.numel() for p in model.parameters()), "size_mb": size_mb(model), **extra, **scores}


def distill(
    teacher_run: str,
    out: str | None,
    layers: int | None,
    student_model: str | None,
    steps: int,
    lr: float,
    temperature: float,
    weight: float,
    overrides: list[str] | None = None,
) -> dict:
    run = RunDir.open(teacher_run, "the teacher")
    if (layers is None) == (student_model is None):
        raise UsageError("give exactly one of --layers N (a smaller copy of the teacher) or --student MODEL")
    t0 = time.perf_counter()
    cfg, teacher, tok = load_run(run, overrides)
    if hasattr(teacher, "merge_and_unload"):
        teacher = cast("PeftModel", teacher).merge_and_unload()  # the adapter folded in: a plain model to copy layers from
    teacher.eval().requires_grad_(False)
    student = make_student(cfg, teacher, tok, layers, student_model)
    task = load_task(cfg.data, cfg.eval)
    fmt = Formatter(tok, cfg.data)
    train = encode_task(cfg, fmt, task, task.train, f"{task.name} train")
    val = encode_task(cfg, fmt, task, task.validation, f"{task.name} validation")
    accelerator = make_accelerator(cfg)
    out_dir = Path(out) if out else run.path / "student"
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    kd = Distillation(weight, temperature, on=("new",), teacher=teacher, positions="response")
    tcfg = cfg.trainer.model_copy(update={"max_steps": steps, "lr": lr, "eval_every": None, "save_every": None})
    n_t, n_s = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    console.print(f"distilling {task.name}: student {n_s:,} parameters from a teacher of {n_t:,}")
    state = fit(student, train, val, tcfg, tok.pad_token_id, accelerator, out_dir / "checkpoints", [kd], Hooks())
    student = accelerator.unwrap_model(student)
    autocast = accelerator.autocast
    teacher_scores = evaluate_task(teacher, tok, fmt, task, val, cfg.eval, autocast)
    student_scores = evaluate_task(student, tok, fmt, task, val, cfg.eval, autocast)
    tmp = staging_dir(out_dir / "model")  # written whole or not at all
    student.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    replace_dir(tmp, out_dir / "model")
    summary = {
        "task": task.name,
        "metric": task.metric,
        "teacher": describe(teacher, teacher_scores, run=teacher_run),
        "student": describe(student, student_scores, layers=student.config.num_hidden_layers),
        "train": {
            "steps": state.step,
            "tokens": state.tokens,
            "train_seconds": state.train_seconds,
            "wall_seconds": time.perf_counter() - t0,
        },
    }
    write_json(out_dir / "summary.json", summary)
    return summary
