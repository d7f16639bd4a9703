"""Model-side scoring: token NLL (the training loss too), label likelihoods, batched greedy generation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch

from retune.data.batching import collate
from retune.data.templates import Encoded
from retune.evaluate import shared_prefix
from retune.models.loss import hidden_path, token_nll
from retune.models.tasks import task_type_of
from retune.types import Autocast, Model, Tokenizer


@torch.no_grad()
def example_nlls(model: Model, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> tuple[list[float], list[int]]:
    """Each example's summed token NLL and labelled-token count, in the examples' order."""
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        with autocast():
            nll, n = batch_nll(model, [examples[i] for i in idx], pad_id)
        for j, i in enumerate(idx):
            sums[i], counts[i] = float(nll[j]), int(n[j])
    return sums, counts


def mean_nll(model: Model, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> float:
    total, count = nll_totals(model, examples, pad_id, batch_size, autocast)
    return total / max(count, 1)


@torch.no_grad()
def nll_totals(model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> tuple[float, int]:
    """(summed token NLL, labelled tokens): sums, so that shards scored by several processes add up.
    `model` is a Model, or under FSDP / ZeRO-3 the engine's wrapped one (train/loop.py validates with it)."""
    total, count = 0.0, 0
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
    for s in range(0, len(order), batch_size):
        with autocast():
            nll, n = batch_nll(model, [examples[i] for i in order[s : s + batch_size]], pad_id)
        total += nll.sum().item()
        count += int(n.sum())
    return total, count


def batch_nll(model: Any, examples: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """token_nll of one batch. Where the examples start with the same unlabelled tokens (a chat
    template, a system prompt, an instruction: 40 of the quickstart's 73 tokens) and the model takes a
    key/value cache as-is, those tokens run once (_nll_shared): the same attention over the same
    context, equal to the padded forward up to kernel rounding (tests/test_loss.py)."""
    path = hidden_path(model)
    if path is not None and len(examples) > 1 and shared_prefix.supported(model):
        shared = min(shared_prefix.common_prefix_len([e.input_ids for e in examples]), *(first_label(e) - 1 for e in examples))
        if shared >= shared_prefix.MIN_SHARED_PREFIX:
            return _nll_shared(path, examples, shared, pad_id)
    return token_nll(model, collate(examples, pad_id))


def first_label(e: Encoded) -> int:
    """Index of the first labelled token (len(labels) when none is)."""
    return next((t for t, v in enumerate(e.labels) if v != -100), len(e.labels))


def _nll_shared(path: tuple[Any, Any], examples: list[Encoded], shared: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """token_nll with the first `shared` tokens (the same in every example, none of them a label nor
    the position that predicts the first label) run once as the key/value cache every row continues from."""
    import torch.nn.functional as F

    backbone, head = path
    batch = collate([Encoded(e.input_ids[shared:], e.labels[shared:], 0) for e in examples], pad_id)
    hidden = shared_prefix.continued(backbone, examples[0].input_ids[:shared], batch)
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    losses = F.cross_entropy(head(hidden[:, :-1][keep]).float(), labels[keep], reduction="none")
    rows = torch.nonzero(keep, as_tuple=True)[0]
    return torch.zeros(len(examples), dtype=torch.float32).index_add(0, rows, losses), keep.sum(dim=1)


@contextlib.contextmanager
def fp32_weights(model: Model) -> Iterator[None]:
    """The model's bf16 / fp16 weights (and buffers) in fp32 for the duration, then back, bit for bit
    (every bf16 value is exact in fp32). Quantised weights (int8 / 4-bit storage) are left alone.
    Casting back rather than keeping the bf16 tensors is deliberate: the loaded weights are anonymous
    memory, freed for the pass; keeping them measured 175 MB more at the quickstart's base scoring (b51d845)."""
    low = [t for t in (*model.parameters(), *model.buffers()) if t.dtype in (torch.bfloat16, torch.float16)]
    dtypes = [t.dtype for t in low]
    for t in low:
        t.data = t.data.float()
    try:
        yield
    finally:
        for t, dt in zip(low, dtypes, strict=True):
            t.data = t.data.to(dt)


@torch.no_grad()
def label_loglik(
    model: Model,
    prompts_ids: list[list[int]],
    label_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    autocast: Autocast,
    fp32: bool = True,
) -> torch.Tensor:
    """(n_prompts, n_labels) summed log-probabilities of each label's tokens after each prompt.

    fp32 (default): the labels are ranked as with fp32 weights and no autocast, whatever the training
    precision. In bf16 the logits are rounded to 1/8 nat or coarser: on the quickstart's 600 reviews the
    base model's two labels tied exactly on 98 (argmax then says the first label) and 261 were within
    one bf16 step, so another bf16 kernel path (oneDNN's AVX512_CORE or AVX2 instead of AVX512-BF16)
    moved 35-44 predictions and the base score by up to 2 points. In fp32 the smallest margin there is
    4e-4 nats against kernel differences of 2e-5 (eval batch 1 vs 16). fp32 costs 3x bf16's time, so
    every prompt is first scored in the training precision with the head in fp32 (no rounded logits),
    and only prompts whose best two labels are within REFINE_MARGIN nats are scored again in fp32
    (_refined); a prompt's ranking can only differ from fp32's where the two passes differ by more
    than its margin. fp32=False: the training precision only (bf16 logits)."""
    if fp32:
        return _refined(model, prompts_ids, label_ids, pad_id, batch_size, autocast)
    model.eval()
    if all(len(ids) == 1 for ids in label_ids):
        return _single_token_loglik(model, prompts_ids, [ids[0] for ids in label_ids], pad_id, batch_size, autocast)
    return torch.tensor(option_loglik(model, prompts_ids, [label_ids] * len(prompts_ids), pad_id, batch_size, autocast, fp32=False))


# Prompts whose best two labels are closer than this (nats) after the training-precision pass are scored
# again in fp32. On the quickstart's 600 reviews the margin differed between the bf16 pass (fp32 head, AMX)
# and fp32 by at most 0.128 nats for the base model (mean 0.031; 338 prompts re-scored) and 0.135 for a
# tuned LoRA (31 re-scored); no prediction differed from fp32's. About 2x headroom.
REFINE_MARGIN = 0.25


def _refined(
    model: Model, prompts_ids: list[list[int]], label_ids: list[list[int]], pad_id: int, batch_size: int, autocast: Autocast
) -> torch.Tensor:
    """label_loglik(fp32=True): the training-precision pass (fp32 head), then fp32 for the close calls."""
    device = next(model.parameters()).device.type
    with autocast():
        on = torch.is_autocast_enabled(device)
    low = next((t.dtype for t in model.parameters() if t.dtype in (torch.bfloat16, torch.float16)), None)
    if not on and low is None:  # already fp32 throughout: one pass
        return label_loglik(model, prompts_ids, label_ids, pad_id, batch_size, autocast, fp32=False)
    if not on:  # low-precision weights and no autocast given: the weights' precision (adapters in fp32 need the cast)
        autocast = lambda: torch.autocast(device, dtype=low)  # noqa: E731
    with fp32_head(model):
        out = label_loglik(model, prompts_ids, label_ids, pad_id, batch_size, autocast, fp32=False)
    if out.shape[1] < 2:
        return out
    top2 = out.topk(2, dim=1).values
    close = torch.nonzero(top2[:, 0] - top2[:, 1] < REFINE_MARGIN, as_tuple=True)[0].tolist()
    if close:
        with fp32_weights(model):
            again = label_loglik(model, [prompts_ids[i] for i in close], label_ids, pad_id, batch_size, contextlib.nullcontext, fp32=False)
        out[close] = again
    return out


@contextlib.contextmanager
def fp32_head(model: Model) -> Iterator[None]:
    """The output head (a plain Linear, as every supported family's is) computed in fp32 from the
    backbone's hidden states: logits are not rounded to bf16 steps. Any other head is left as it is."""
    path = hidden_path(model)
    head = path[1] if path is not None else None
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
        yield
        return
    weight = head.weight.float()
    bias = head.bias.float() if head.bias is not None else None

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float().contiguous(), weight, bias)

    head.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del head.forward


@torch.no_grad()
def option_loglik(
    model: Model,
    prompts_ids: list[list[int]],
    options_ids: list[list[list[int]]],
    pad_id: int,
    batch_size: int,
    autocast: Autocast,
    fp32: bool = True,
) -> list[list[float]]:
    """Summed log-probability of each prompt's own options (options_ids[i] for prompts_ids[i]; cloze
    scoring, where every question has its own answers): the prompt computed once with all its options
    where the model allows it (evaluate/shared_prefix.py), else one sequence per (prompt, option)."""
    if fp32:
        with fp32_weights(model):
            return option_loglik(model, prompts_ids, options_ids, pad_id, batch_size, contextlib.nullcontext, fp32=False)
    if shared_prefix.supported(model):
        return shared_prefix.option_loglik(model, prompts_ids, options_ids, pad_id, batch_size, autocast)
    return per_option_loglik(model, prompts_ids, options_ids, pad_id, batch_size, autocast)


@torch.no_grad()
def per_option_loglik(
    model: Model, prompts_ids: list[list[int]], options_ids: list[list[list[int]]], pad_id: int, batch_size: int, autocast: Autocast
) -> list[list[float]]:
    """option_loglik with one sequence per (prompt, option): any model."""
    model.eval()
    pairs = [(p, o) for p in range(len(prompts_ids)) for o in range(len(options_ids[p]))]
    examples = [
        Encoded(prompts_ids[p] + options_ids[p][o], [-100] * len(prompts_ids[p]) + options_ids[p][o], len(prompts_ids[p])) for p, o in pairs
    ]
    out = torch.empty(len(examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        with autocast():
            nll, _ = token_nll(model, collate([examples[i] for i in idx], pad_id))
        out[idx] = -nll.float().cpu()
    scores: list[list[float]] = [[] for _ in prompts_ids]
    for (p, _), v in zip(pairs, out.tolist(), strict=True):
        scores[p].append(v)
    return scores


def _single_token_loglik(
    model: Model, prompts_ids: list[list[int]], label_tok: list[int], pad_id: int, batch_size: int, autocast: Autocast
) -> torch.Tensor:
    """One forward per prompt when every label is one token: the next-token distribution at the
    prompt's last position scores all labels at once (exactly what the general path computes,
    at 1 / n_labels of its cost). Where a batch's prompts start with the same tokens (a chat
    template, a system prompt, an instruction) and the model takes a key/value cache as-is, those
    tokens run once per batch (_last_logits_shared)."""
    out = torch.empty(len(prompts_ids), len(label_tok))
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    labels = torch.tensor(label_tok)
    path = hidden_path(model)
    share = path is not None and shared_prefix.supported(model)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        prompts = [prompts_ids[i] for i in idx]
        shared = shared_prefix.common_prefix_len(prompts) if share else 0
        with autocast():
            if path is not None and shared >= shared_prefix.MIN_SHARED_PREFIX:
                logits = _last_logits_shared(path, prompts, shared, pad_id)
            else:
                logits = _last_logits(model, path, prompts, pad_id)
        out[idx] = torch.log_softmax(logits.float(), dim=-1)[:, labels].cpu()
    return out


def _last_logits(model: Model, path: tuple[Any, Any] | None, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Logits at each prompt's last position, one padded batch."""
    batch = collate([Encoded(p, [-100] * len(p), len(p)) for p in prompts], pad_id)
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real position of each row
    rows = torch.arange(len(prompts))
    if path is not None:
        hidden = path[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return path[1](hidden[rows, last])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, -batch["input_ids"].shape[1] :][rows, last]


def _last_logits_shared(path: tuple[Any, Any], prompts: list[list[int]], shared: int, pad_id: int) -> torch.Tensor:
    """_last_logits with the first `shared` tokens (the same in every prompt) run once: their keys and
    values, computed on one row, are the cache every row continues from (positions go on from
    `shared`). The same attention over the same context, so equal up to kernel rounding
    (tests/test_loss.py)."""
    backbone, head = path
    batch = collate([Encoded(p[shared:], [-100] * (len(p) - shared), 0) for p in prompts], pad_id)
    hidden = shared_prefix.continued(backbone, prompts[0][:shared], batch)
    return head(hidden[torch.arange(len(prompts)), batch["attention_mask"].sum(dim=1) - 1])


@torch.no_grad()
def generate(
    model: Model,
    tok: Tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    autocast: Autocast,
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
    start_new = not task_type_of(model).encoder_decoder
    path = hidden_path(model) if start_new and shared_prefix.supported(model) else None
    generator: Any = model  # causal LMs and seq2seq models generate (GenerationMixin, or peft's wrapper of one)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            gen_kwargs.setdefault("do_sample", False)
            with autocast():
                extra = _shared_start(path, enc, tok.pad_token_id) if path is not None and len(idx) > 1 else {}
                ids = generator.generate(**{**enc, **extra}, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **gen_kwargs)
            for j, i in enumerate(idx):
                text = cast(str, tok.decode(ids[j, enc["input_ids"].shape[1] * start_new :], skip_special_tokens=True))  # one row: one str
                outs[i] = cut_at_stop(text, stop).strip()
    finally:
        tok.padding_side = side
    return outs


def _shared_start(path: tuple[Any, Any], enc: Any, pad_id: int) -> dict[str, Any]:
    """A left-padded generation batch whose prompts start alike, rearranged so that the common start
    runs once (shared_prefix.py): each row becomes start + padding + its own tokens, the start's keys
    and values the cache every row continues from. Positions come from the attention mask (generate's
    own rule), so each token keeps the position it has in the plain batch; the padding stays masked.
    Nothing to share (or fewer than MIN_SHARED_PREFIX tokens): {} (the plain batch)."""
    mask = enc["attention_mask"]
    rows = [r[m.bool()].tolist() for r, m in zip(enc["input_ids"], mask, strict=True)]
    shared = shared_prefix.common_prefix_len(rows)
    if shared < shared_prefix.MIN_SHARED_PREFIX:
        return {}
    own = torch.full((len(rows), mask.shape[1] - shared), pad_id, dtype=torch.long)
    own_mask = torch.zeros_like(own)
    for b, r in enumerate(rows):
        n = len(r) - shared
        own[b, own.shape[1] - n :], own_mask[b, own.shape[1] - n :] = torch.tensor(r[shared:]), 1
    start = torch.tensor(rows[0][:shared]).expand(len(rows), -1)
    return {
        "input_ids": torch.cat([start, own], dim=1),
        "attention_mask": torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype), own_mask.to(mask.dtype)], dim=1),
        "past_key_values": shared_prefix.expanded_cache(path[0], rows[0][:shared], len(rows)),
    }


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The text before the earliest stop string (the stop string itself is dropped)."""
    ends = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    return text[: min(ends)] if ends else text
