"""What a run's scoring passes hold beyond the model: each task's test scoring and validation loss, the
retention probe and the retained tasks, at their largest batch (the longest rows are scored together:
every scoring path sorts by length).

Counted for a causal LM without gradients (evaluate/scoring.py): one decoder layer's temporaries at a
time plus the residual stream, eager attention's (B, heads, T, T) scores and probabilities, the head's
logits (CE_CHUNK rows at a time for a loss, one row per prompt for single-token labels and for a
generation's prefill: models/load.py::contiguous_head_input), and for generation the KV cache of
every layer at prompt + new tokens. An unmerged adapter (LoRA at base and tuned scoring) adds each adapted linear's fp32 copy of
its input. Likelihoods in fp32 (eval.likelihood_fp32) cast a bf16 base to fp32 for their duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from retune.config import RetuneConfig
from retune.data.batching import padded_width
from retune.plan.shapes import Shape

if TYPE_CHECKING:
    from retune.evaluate.forgetting import RetainSet
    from retune.session.prepare import Prepared

CE_CHUNK = 256  # models/loss.py CHUNK


@dataclass
class Job:
    """One scoring pass at its largest batch."""

    name: str
    mode: str  # likelihood | cloze | generate | nll | classifier
    rows: int
    tokens: int  # the longest row (a prompt; a prompt with its options for tree rows)
    new_tokens: int = 0  # generation

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "mode": self.mode, "rows": self.rows, "tokens": self.tokens, "new_tokens": self.new_tokens}


def _longest(lengths: list[int]) -> int:
    """The width collate pads a pass's longest row to."""
    return padded_width(max(lengths, default=0))


def task_jobs(cfg: RetuneConfig, prep: Prepared) -> list[Job]:
    """Each task's test scoring and validation loss."""
    from retune.evaluate.task_eval import _resp_ids, scoring_mode
    from retune.models.tasks import task_type

    fmt, b = prep.fmt, cfg.eval.batch_size
    out = []
    for task, val in zip(prep.tasks, prep.task_val, strict=True):
        mode = task_type(cfg.model.task).scoring(task, cfg.eval)
        prompts = [fmt.record_prompt(task.template, r)[0] for r in task.test]
        rows = min(b, len(prompts))
        if mode == "generate":
            lengths = [len(fmt.tok(p, add_special_tokens=not fmt.chat).input_ids) for p in prompts]
            # the tokenizer pads generation prompts (evaluate/scoring.py::generate), not collate: no rounding
            out.append(Job(f"{task.name} generation", mode, rows, max(lengths, default=0), task.max_new_tokens or cfg.eval.max_new_tokens))
        elif mode in ("likelihood", "cloze") and prompts:
            if mode == "cloze" and task.choices:
                options = [sum(len(_resp_ids(fmt, " " + str(r[c]))) for c in task.choices) for r in task.test]
            else:
                labels = [len(_resp_ids(fmt, label)) for label in task.labels or []]
                options = [0 if all(n == 1 for n in labels) else sum(labels)] * len(prompts)
            lengths = [len(fmt.prompt_ids(p)) + o for p, o in zip(prompts, options, strict=True)]
            out.append(Job(f"{task.name} {mode}", scoring_mode(task, cfg.eval) if mode == "cloze" else mode, rows, _longest(lengths)))
        elif prompts:
            out.append(Job(f"{task.name} {mode}", mode, rows, _longest([len(fmt.prompt_ids(p)) for p in prompts])))
        if val:
            out.append(Job(f"{task.name} validation loss", "nll", min(b, len(val)), _longest([len(e.input_ids) for e in val])))
    return out


def retained_jobs(cfg: RetuneConfig, prep: Prepared, rset: RetainSet | None = None) -> list[Job]:
    """The retained tasks (scored as tasks) and the general-text probe (token NLL)."""
    from retune.evaluate.forgetting import load_retained
    from retune.session.prepare import Prepared

    if rset is None:
        if cfg.retain.probe and not task_type_has_head(cfg):
            cfg = cfg.model_copy(update={"retain": cfg.retain.model_copy(update={"probe": None})})
        rset = load_retained(cfg.retain, cfg.data, cfg.eval, prep.tok, prep.fmt)
    out = []
    if rset.tasks:
        tasks = [r.task for r in rset.tasks]
        vals = [r.val for r in rset.tasks]
        out += task_jobs(cfg, Prepared(cfg, prep.tok, prep.fmt, tasks, [[] for _ in tasks], vals, prep.mix))
    if rset.probe:
        longest = _longest([len(e.input_ids) for e in rset.probe])
        out.append(Job("general-text probe", "nll", min(cfg.eval.batch_size, len(rset.probe)), longest))
    return out


def task_type_has_head(cfg: RetuneConfig) -> bool:
    from retune.models.tasks import task_type

    return task_type(cfg.model.task).has_lm_head


def job_bytes(s: Shape, job: Job, act: int, eager: bool, adapter_fan_in: int = 0) -> float:
    """Bytes one scoring pass holds beyond the model's weights, at its largest batch. `act`: bytes of
    an activation (2 under bf16 autocast, 4 in fp32); `adapter_fan_in`: the widest input of an
    unmerged adapted linear (0: none)."""
    h, i, V = s.hidden, s.intermediate, s.vocab
    a, k = s.heads * s.head_dim, s.kv_heads * s.head_dim
    T = job.tokens + job.new_tokens
    n = job.rows * job.tokens  # tokens of one forward (a generation's prefill)
    residual = n * 4 * h * 4  # the residual stream and the fp32 norm around it
    scores = job.rows * job.tokens * T * ((4 + act) * s.heads + 4) if eager else 0  # scores, probabilities, mask
    attention = n * (a + 2 * k) * act * 2 + scores  # q/k/v + rotary, then the attention's own tensors
    mlp = n * 3 * i * act  # freed before the MLP runs, so a layer holds the larger of the two
    layer = residual + max(attention, mlp) + n * adapter_fan_in * (4 + act)  # peft: the adapter's fp32 input copy
    if job.mode == "generate":
        cache = 2 * s.layers * job.rows * k * T * act
        return layer + cache + largest_block(s, job)
    if job.mode == "likelihood":  # single-token labels: the last position's logits
        head = job.rows * V * (act + 8)
    else:  # a loss over every labelled position, CE_CHUNK rows of logits at a time
        head = min(n, CE_CHUNK) * V * (act + 8) + n * h * act
    return layer + head


def largest_block(s: Shape, job: Job) -> float:
    """The largest single tensor of a pass: a generation's last-position logits in fp32, else one chunk
    of fp32 logits. (Through a frozen head, before models/load.py::contiguous_head_input, the prefill
    copied the head's weight once per row: +905 MB for 16 rows on SmolLM2.)"""
    if job.mode == "generate":
        return job.rows * s.vocab * 4
    return min(job.rows * max(job.tokens, 1), CE_CHUNK) * s.vocab * 4
