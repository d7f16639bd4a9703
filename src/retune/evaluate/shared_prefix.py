"""Prompt tokens computed once: what several rows share runs a single time.

Two kinds of sharing, both equal to the plain forward up to kernel rounding:

- **A batch's common start** (a chat template, a system prompt, an instruction: 26-40 tokens of every
  prompt of the forgetting benchmark's retained tasks, 40 of the quickstart's 71) runs on one row, and
  its keys and values are the cache every row of the batch continues from, with positions going on
  from it (`common_prefix_len`, `expanded_cache`). Label likelihood, validation loss, cloze options and
  greedy generation use it (tests/test_loss.py, tests/test_families.py).
- **Cloze options share their prompt**: cloze scoring (MMLU's option texts, multi-token labels) asks for
  log p(option | prompt) for every option of a question. Scored one (prompt, option) sequence at a
  time, the prompt, usually most of the tokens, goes through the model once per option. Here a row is
  `prompt + option_1 + ... + option_k`: each option's tokens sit at the positions they would have after
  the prompt alone (position ids restart at len(prompt)) and attend to the prompt and to their own
  earlier tokens only (a tree mask), so every option sees exactly the context it sees alone, and the
  prompt is computed once. On MMLU (4 options, prompts ~5x longer than an option) this is about 3x fewer
  tokens. Equal to the one-sequence-per-option path up to kernel rounding (tests/test_families.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from retune.models.loss import hidden_path, unwrap
from retune.types import Autocast, Model

# Decoders whose attention takes a custom 4-D mask and explicit position ids as-is (rotary positions,
# full causal attention): the families retune tests. Others are scored one sequence per option.
FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "granite", "phi3", "gemma"}
ATTENTION = {"eager", "sdpa", "retune_eager"}


def supported(model: Model) -> bool:
    config = getattr(unwrap(model), "config", None)
    return (
        hidden_path(model) is not None
        and getattr(config, "model_type", None) in FAMILIES
        and getattr(config, "_attn_implementation", None) in ATTENTION
        and not getattr(config, "sliding_window", None)
    )


# A batch's shared leading tokens run once when there are at least this many.
MIN_SHARED_PREFIX = 8


def common_prefix_len(prompts: list[list[int]]) -> int:
    """How many leading tokens all prompts share, leaving each at least one token of its own (its
    last position is where the next token is scored)."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def expanded_cache(backbone: Any, prefix: list[int], rows: int) -> Any:
    """The keys and values of `prefix`, computed on one row, seen by `rows` rows (expanded, not copied)."""
    from transformers import DynamicCache

    past = backbone(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    return DynamicCache(
        ddp_cache_data=[(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)) for layer in past.layers]
    )


def continued(backbone: Any, prefix: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states of a right-padded batch of each row's own tokens (input_ids, attention_mask)
    that continues from `prefix`, run once as the cache every row shares; positions go on from it."""
    b, width = batch["input_ids"].shape
    own = batch["attention_mask"]
    mask = torch.cat([torch.ones(b, len(prefix), dtype=own.dtype), own], dim=1)
    positions = torch.arange(len(prefix), len(prefix) + width).expand(b, -1)
    cache = expanded_cache(backbone, prefix, b)
    return backbone(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, past_key_values=cache).last_hidden_state


def _row(prompt: list[int], options: list[list[int]], shared: int) -> tuple[list[int], list[int], list[int]]:
    """(ids, position ids, segment: 0 for the prompt, k + 1 for option k) of one tree row; the first
    `shared` prompt tokens are in the cache, not in the row."""
    ids, pos, seg = prompt[shared:], list(range(shared, len(prompt))), [0] * (len(prompt) - shared)
    for k, opt in enumerate(options):
        ids += opt
        pos += range(len(prompt), len(prompt) + len(opt))
        seg += [k + 1] * len(opt)
    return ids, pos, seg


def _batch(rows: list[tuple[list[int], list[int], list[int]]], pad_id: int, sdpa: bool, shared: int) -> dict[str, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, (i, p, s) in enumerate(rows):
        ids[b, : len(i)], pos[b, : len(p)], seg[b, : len(s)] = torch.tensor(i), torch.tensor(p), torch.tensor(s)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # key is prompt, or the query's own option
    allowed = causal & same & (seg[:, None, :] >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty softmax row
    allowed = torch.cat([torch.ones(len(rows), width, shared, dtype=torch.bool), allowed], dim=2)  # the cached prompt start
    mask = allowed[:, None] if sdpa else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    return {"input_ids": ids, "position_ids": pos, "attention_mask": mask}


@torch.no_grad()
def option_loglik(
    model: Model, prompts_ids: list[list[int]], options_ids: list[list[list[int]]], pad_id: int, batch_size: int, autocast: Autocast
) -> list[list[float]]:
    """Summed log-probability of each prompt's own options, one tree row per prompt, a batch's common
    prompt start run once (see the module)."""
    model.eval()
    backbone, head = hidden_path(model)  # type: ignore[misc]  # supported() checked it
    sdpa = getattr(unwrap(model).config, "_attn_implementation", None) == "sdpa"
    scores: list[list[float]] = [[] for _ in prompts_ids]
    sizes = [len(p) + sum(map(len, o)) for p, o in zip(prompts_ids, options_ids, strict=True)]
    order = sorted(range(len(prompts_ids)), key=sizes.__getitem__)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        shared = common_prefix_len([prompts_ids[i] for i in idx]) if len(idx) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        batch = _batch([_row(prompts_ids[i], options_ids[i], shared) for i in idx], pad_id, sdpa, shared)
        rows, at, targets, owner = [], [], [], []  # which hidden state predicts which option token
        for b, i in enumerate(idx):
            start = len(prompts_ids[i]) - shared
            for k, opt in enumerate(options_ids[i]):
                positions = [len(prompts_ids[i]) - shared - 1] + list(range(start, start + len(opt) - 1))
                rows += [b] * len(opt)
                at += positions
                targets += opt
                owner += [(i, k)] * len(opt)
                start += len(opt)
        with autocast():
            if shared:
                batch["past_key_values"] = expanded_cache(backbone, prompts_ids[idx[0]][:shared], len(idx))
            hidden = backbone(**batch).last_hidden_state
            logp = F.log_softmax(head(hidden[torch.tensor(rows), torch.tensor(at)]).float(), dim=-1)
        tok = logp.gather(1, torch.tensor(targets)[:, None])[:, 0].tolist()
        sums: dict[tuple[int, int], float] = {}
        for key, v in zip(owner, tok, strict=True):
            sums[key] = sums.get(key, 0.0) + v
        for i in idx:
            scores[i] = [sums.get((i, k), 0.0) for k in range(len(options_ids[i]))]
    return scores
