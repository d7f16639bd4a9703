"""Model-side scoring: token NLL (the training loss too), label likelihoods, batched greedy generation."""

from __future__ import annotations

from typing import Any

import torch

from retune.data.batching import collate
from retune.data.templates import Encoded
from retune.models.loss import token_nll


@torch.no_grad()
def mean_nll(model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Any) -> float:
    total, count = 0.0, 0
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
    for s in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[s : s + batch_size]], pad_id)
        with autocast():
            nll, n = token_nll(model, batch)
        total += nll.sum().item()
        count += int(n.sum())
    return total / max(count, 1)


@torch.no_grad()
def label_loglik(
    model: Any, prompts_ids: list[list[int]], label_ids: list[list[int]], pad_id: int, batch_size: int, autocast: Any
) -> torch.Tensor:
    """(n_prompts, n_labels) summed log-probabilities of each label's tokens after each prompt."""
    model.eval()
    pairs = [(p, l) for p in range(len(prompts_ids)) for l in range(len(label_ids))]
    examples = [Encoded(prompts_ids[p] + label_ids[l], [-100] * len(prompts_ids[p]) + label_ids[l], len(prompts_ids[p])) for p, l in pairs]
    out = torch.empty(len(examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        with autocast():
            nll, _ = token_nll(model, collate([examples[i] for i in idx], pad_id))
        out[idx] = -nll.float().cpu()
    return out.view(len(prompts_ids), len(label_ids))


@torch.no_grad()
def generate(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    autocast: Any,
    add_special_tokens: bool = False,
    stop: list[str] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    **gen_kwargs: Any,
) -> list[str]:
    """Greedy (by default; sampling when temperature > 0) batched generation; returns only the new
    text of each prompt, cut before the first of the `stop` strings."""
    model.eval()
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    if stop:  # rows stop early inside generate; the cut below is exact whatever the tokenisation
        gen_kwargs.update(stop_strings=list(stop), tokenizer=tok)
    side = tok.padding_side
    tok.padding_side = "left"  # generation appends on the right: pad on the left
    outs: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    # a decoder-only model returns prompt + new tokens; an encoder-decoder (T5) only the decoder's output
    start_new = not getattr(model.config, "is_encoder_decoder", False)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            gen_kwargs.setdefault("do_sample", False)
            with autocast():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **gen_kwargs)
            for j, i in enumerate(idx):
                outs[i] = cut_at_stop(tok.decode(ids[j, enc["input_ids"].shape[1] * start_new :], skip_special_tokens=True), stop).strip()
    finally:
        tok.padding_side = side
    return outs


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The text before the earliest stop string (the stop string itself is dropped)."""
    ends = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    return text[: min(ends)] if ends else text
