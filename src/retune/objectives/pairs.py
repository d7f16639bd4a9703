"""Preference pairs: (prompt, chosen, rejected) records -> encoded pairs, batched as TRL batches them
(the chosen rows, then the rejected rows, in one forward), and their sequence log-probabilities.

Records come in TRL's standard preference format: `prompt`, `chosen`, `rejected` as text, or
conversational (`prompt` a list of messages, `chosen` / `rejected` lists ending with the assistant's
answer). `pairs: other` makes pairs from a supervised task instead: its reference answer against
another record's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from retune.config import TemplateConfig
from retune.data.batching import collate
from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError
from retune.evaluate.report import console
from retune.models.loss import causal_token_nll

PAIR_TEMPLATE = TemplateConfig(prompt="{prompt}", response="{chosen}")  # scoring: the chosen answer is the reference
PAIR_COLUMNS = ("chosen", "rejected")


@dataclass
class Pair(Encoded):
    """An encoded pair: the chosen answer in Encoded's own fields (so NLL-based scoring reads it as
    an example), the rejected one beside it, and the reference model's log-probabilities of both."""

    rejected: Encoded | None = None
    ref: tuple[float, float] = (0.0, 0.0)


@dataclass
class PairText:
    prompt: str
    system: str | None
    messages: list[dict] | None  # a conversational prompt
    chosen: str
    rejected: str


def _answer(value: Any) -> str:
    """A completion as text: a string, or (conversational) the content of the last message."""
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value and isinstance(value[-1], dict) else ""
    return "" if value is None else str(value)


def from_data(template: TemplateConfig, records: list[dict], where: str) -> list[PairText]:
    """Pairs from the records' own chosen / rejected columns; a row without one is an error naming it."""
    out = []
    for i, r in enumerate(records):
        for col in PAIR_COLUMNS:
            if not _answer(r.get(col)).strip():
                have = ", ".join(sorted(r)) or "none"
                raise UsageError(
                    f"{where} record {i + 1}: no '{col}' answer (columns: {have}); preference data needs prompt, chosen and "
                    f"rejected (TRL's format): fill it, drop the row, or map your column with columns: {{{col}: <column>}}"
                )
        if isinstance(r.get("prompt"), list):
            out.append(PairText("", None, r["prompt"], _answer(r["chosen"]), _answer(r["rejected"])))
        else:
            prompt, _, system = render(template, r)
            out.append(PairText(prompt, system, None, _answer(r["chosen"]), _answer(r["rejected"])))
    return out


def from_other(template: TemplateConfig, records: list[dict], seed: int, where: str) -> list[PairText]:
    """A supervised task's pairs: each record's reference answer (chosen) against another record's
    (rejected), by a seeded derangement; pairs whose two answers are the same text are dropped."""
    rendered = [render(template, r) for r in records]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    other = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a cycle: nobody meets itself
    out = [PairText(p, s, None, resp, rendered[other[i]][1]) for i, (p, resp, s) in enumerate(rendered) if len(records) > 1]
    kept = [x for x in out if x.chosen.strip() != x.rejected.strip()]
    if len(kept) < len(out):
        console.print(f"{where}: {len(out) - len(kept)} of {len(out)} pairs dropped (chosen and rejected are the same text)")
    return kept


def encode_pair(fmt: Formatter, t: PairText, where: str) -> Pair:
    chosen = fmt.encode(t.prompt, t.chosen, t.system, t.messages, where=where)
    rejected = fmt.encode(t.prompt, t.rejected, t.system, t.messages, where=where)
    return Pair(chosen.input_ids, chosen.labels, chosen.prompt_len, rejected=rejected)


def pair_batch(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the B chosen answers, then the B rejected ones (TRL's concatenated layout)."""
    rows = [Encoded(p.input_ids, p.labels, p.prompt_len) for p in pairs] + [p.rejected for p in pairs if p.rejected is not None]
    batch = collate(rows, pad_id)
    batch["ref_logps"] = torch.tensor([p.ref[0] for p in pairs] + [p.ref[1] for p in pairs], dtype=torch.float32)  # (2B,)
    batch["weights"] = torch.tensor([p.weight for p in pairs], dtype=torch.float32)  # (B,)
    return batch


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's answer tokens (2B,), their counts (2B,)), with gradient.
    Only the answer positions go through the output head (models/loss.py)."""
    nll, n = causal_token_nll(model, batch)
    return -nll, n.float()


@torch.no_grad()
def reference_logps(model: Any, pairs: list[Pair], pad_id: int, batch_size: int, autocast: Any) -> None:
    """Fill each pair's `ref` with the model's log-probabilities as it is now (eval mode: no dropout).
    Done once before a stage trains: the reference is the model the stage starts from."""
    was_training = model.training
    model.eval()
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        with autocast():
            logps, _ = sequence_logps(model, pair_batch(chunk, pad_id))
        chosen, rejected = logps.float().chunk(2)
        for p, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
            p.ref = (c, r)
    model.train(was_training)


@dataclass
class Pending(Pair):
    """pairs: self, before sampling: the prompt and the task's reference answer (encoded as the chosen
    answer so the example is well formed); `sample_pairs` replaces it with a sampled pair."""

    source: PairText | None = None
    metric: str = "rouge_l"
    max_new_tokens: int = 64
    stop: list[str] | None = None
    fmt: Formatter | None = None  # how its samples are prompted and encoded


def pending(fmt: Formatter, t: PairText, task: Any, max_new_tokens: int, where: str) -> Pending:
    e = fmt.encode(t.prompt, t.chosen, t.system, t.messages, where=where)
    metric = "rouge_l" if task.metric == "code" else task.metric  # code reports two scores: rank by its chrF's cousin
    return Pending(
        e.input_ids, e.labels, e.prompt_len, rejected=e, source=t, metric=metric, max_new_tokens=max_new_tokens, stop=task.stop, fmt=fmt
    )


def sample_pairs(
    model: Any, fmt: Formatter, items: list[Pending], k: int, temperature: float, top_p: float, batch_size: int, autocast: Any
) -> tuple[list[Pair], dict[str, int]]:
    """k answers per prompt from the model, scored against the reference by the task's metric; the best
    is chosen, the worst rejected; prompts whose best and worst score the same are dropped."""
    from retune.evaluate.metrics import per_example
    from retune.evaluate.scoring import generate

    sources = [p.source for p in items if p.source is not None]
    prompts = [fmt.prompt_text(s.prompt, s.system, s.messages) for s in sources]
    first = items[0]
    texts = generate(
        model,
        fmt.tok,
        prompts * k,
        first.max_new_tokens,
        batch_size,
        autocast,
        add_special_tokens=not fmt.chat,
        stop=first.stop,
        temperature=temperature,
        top_p=top_p,
    )
    scores = per_example(first.metric, texts, [s.chosen for s in sources] * k)
    out: list[Pair] = []
    for i, (src, item) in enumerate(zip(sources, items, strict=True)):
        cands = sorted((scores[j * len(sources) + i], texts[j * len(sources) + i]) for j in range(k) if texts[j * len(sources) + i].strip())
        if len(cands) < 2 or cands[0][0] == cands[-1][0]:
            continue
        try:
            pair = encode_pair(fmt, PairText(src.prompt, src.system, src.messages, cands[-1][1], cands[0][1]), "self-made pair")
        except UsageError:  # a sample that does not fit data.max_length: the prompt is dropped with the ties
            continue
        pair.weight = item.weight
        out.append(pair)
    return out, {"prompts": len(items), "pairs": len(out), "dropped": len(items) - len(out)}  # ties, or too long
