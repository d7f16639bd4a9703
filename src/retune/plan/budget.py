"""--budget: does the run fit, and if not, the cheapest change that does; the plan as a table."""

from __future__ import annotations

import copy
import math
import re

from retune.config import RetuneConfig
from retune.errors import UsageError
from retune.plan.estimate import MB, Plan, estimate
from retune.plan.shapes import Batch, Shape, model_shape

_UNITS = {
    "": MB,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": MB,
    "mb": MB,
    "mib": MB,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tb": 2**40,
}


def parse_budget(text: str) -> float:
    """'8GB', '8 GiB', '512MB', '1.5g' -> MB (binary units; a bare number is MB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"--budget {text!r}: expected a size such as 8GB, 512MB or 1.5GiB")
    return float(m.group(1)) * _UNITS[unit] / MB


def candidates(cfg: RetuneConfig) -> list[tuple[str, list[str]]]:
    """Cheaper variants, cheapest change first: method, then batch split, checkpointing, length."""
    out: list[tuple[str, list[str]]] = []
    t, d = cfg.trainer, cfg.data
    if cfg.adapter.type == "full":
        out.append(("LoRA instead of full fine-tuning", ["adapter.type=lora"]))
    if cfg.adapter.quantization == "none" and cfg.adapter.type in ("full", "lora", "dora"):
        out.append(("QLoRA (4-bit base)", ["adapter.type=qlora"]))
    bs, acc = t.batch_size, t.grad_accum
    while bs > 1:
        bs, acc = bs // 2, acc * 2
        out.append(
            (f"batch_size={bs} with grad_accum={acc} (same global batch)", [f"trainer.batch_size={bs}", f"trainer.grad_accum={acc}"])
        )
    if not t.gradient_checkpointing:
        out.append(("gradient checkpointing", ["trainer.gradient_checkpointing=true", f"trainer.batch_size={t.batch_size}"]))
    length = d.max_length
    while length > 64:
        length //= 2
        out.append((f"data.max_length={length}", [f"data.max_length={length}"]))
    return out


def check_budget(cfg: RetuneConfig, plan: Plan, budget_mb: float, shape: Shape | None = None) -> Plan:
    """Mark whether the plan fits, and if not, the first change of candidates() that does (the
    cheapest); failing every single change, a method change combined with a later one."""
    plan.budget_mb, plan.fits = budget_mb, plan.peak_mb <= budget_mb
    if plan.fits:
        return plan
    options = candidates(cfg)
    methods = [o for o in options if o[1][0].startswith("adapter.")]
    rest = [o for o in options if o not in methods]
    tries = options + [(f"{m[0]} and {o[0]}", m[1] + o[1]) for m in methods for o in rest]
    shapes: dict[str, Shape] = {}
    for label, sets in tries:
        new = _changed(cfg, sets)
        if new.adapter.type == cfg.adapter.type and shape is not None:
            s = shape
        else:
            s = shapes.get(new.adapter.type) or shapes.setdefault(new.adapter.type, model_shape(new))
        p = estimate(new, s, _scaled_batch(new, plan))
        if p.peak_mb <= budget_mb:
            plan.suggestion, plan.suggested_peak_mb = label, p.peak_mb
            return plan
    plan.suggestion = "nothing tried fits: a smaller model, or a larger budget"
    return plan


def _changed(cfg: RetuneConfig, sets: list[str]) -> RetuneConfig:
    from retune.config import apply_override, validate

    raw = copy.deepcopy(cfg.model_dump(mode="json", exclude_unset=True))
    for item in sets:
        apply_override(raw, item)
    return validate(raw)


def _scaled_batch(new: RetuneConfig, plan: Plan) -> Batch:
    """The worst micro-batch of `new` from `old`'s, without re-reading the data."""
    b = plan.batch
    size = min(b["batch_size"], new.trainer.batch_size)
    seq = min(b["seq_len"], new.data.max_length)
    labelled = math.ceil(b["labelled_rows"] * size / max(b["batch_size"], 1) * (seq / b["seq_len"] if new.data.train_on_prompt else 1))
    return Batch(size, seq, min(labelled, size * seq), 0, b["source"], b.get("shapes", 1))


def print_plan(plan: Plan, title: str = "") -> None:
    """The parts, the peak and the budget verdict as a table on stderr (stdout stays for --json)."""
    from rich.console import Console
    from rich.table import Table

    out = Console(stderr=True)
    table = Table(title=f"memory plan {title}".strip(), show_header=True)
    table.add_column("part")
    table.add_column("MB", justify="right")
    for name, mb in plan.parts.items():
        if mb >= 0.05:
            table.add_row(name, f"{mb:,.0f}")
    for name, mb in plan.phases.items():
        table.add_row(f"at {name}", f"{mb:,.0f}", style="dim")
    table.add_row("peak", f"{plan.peak_mb:,.0f}", style="bold")
    out.print(table)
    b = plan.batch
    rows = f"{b['batch_size']} x {b['seq_len']} tokens, {b['labelled_rows']} labelled ({b['source']})"
    out.print(f"largest micro-batch: {rows}; peak while {plan.phase}")
    for note in plan.notes:
        out.print(f"[yellow]note: {note}")
    if plan.budget_mb is not None:
        verdict = "[green]fits" if plan.fits else "[red]does not fit"
        out.print(f"budget {plan.budget_mb:,.0f} MB: {verdict}")
        if not plan.fits and plan.suggestion:
            after = f" (peak {plan.suggested_peak_mb:,.0f} MB)" if plan.suggested_peak_mb else ""
            out.print(f"cheapest change that fits: {plan.suggestion}{after}")


def announce(cfg: RetuneConfig, prep: object, rset: object = None) -> dict | None:
    """`retune train`'s prediction, made before the model loads (printed once it has loaded, so that a bad
    model is still one error line): summary.json `plan` (predicted_mb, phase, phases_mb). None (and a
    note) where the model cannot be planned; the run goes on."""
    from retune.evaluate.report import console
    from retune.plan.estimate import read_data

    try:
        batch, jobs = read_data(cfg, prep=prep, rset=rset)  # type: ignore[arg-type]
        plan = estimate(cfg, batch=batch, jobs=jobs)
    except Exception as e:  # a prediction must never stop a run
        console.print(f"[yellow]memory plan not available ({type(e).__name__}: {e})")
        return None
    return {"predicted_mb": round(plan.peak_mb, 1), "phase": plan.phase, "phases_mb": {k: round(v, 1) for k, v in plan.phases.items()}}
