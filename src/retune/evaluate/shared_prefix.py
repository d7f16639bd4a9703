"""Option log-likelihoods with the prompt computed once: one row holds a prompt and all its options.

Cloze scoring (MMLU's option texts, multi-token labels) asks for log p(option | prompt) for every option
of a question. Scored one (prompt, option) sequence at a time, the prompt, usually most of the tokens,
goes through the model once per option. Here a row is `prompt + option_1 + ... + option_k`: each
option's tokens sit at the positions they would have after the prompt alone (position ids restart at
len(prompt)) and attend to the prompt and to their own earlier tokens only (a tree mask), so every
option sees exactly the context it sees alone, and the prompt is computed once. On MMLU (4 options,
prompts ~5x longer than an option) this is about 3x fewer tokens. Equal to the one-sequence-per-option
path up to kernel rounding (tests/test_shared_prefix.py)."""

from __future__ import annotations

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


def _row(prompt: list[int], options: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """(ids, position ids, segment: 0 for the prompt, k + 1 for option k) of one tree row."""
    ids, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    for k, opt in enumerate(options):
        ids += opt
        pos += range(len(prompt), len(prompt) + len(opt))
        seg += [k + 1] * len(opt)
    return ids, pos, seg


def _batch(rows: list[tuple[list[int], list[int], list[int]]], pad_id: int, sdpa: bool) -> dict[str, torch.Tensor]:
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
    mask = allowed[:, None] if sdpa else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    return {"input_ids": ids, "position_ids": pos, "attention_mask": mask}


@torch.no_grad()
def option_loglik(
    model: Model, prompts_ids: list[list[int]], options_ids: list[list[list[int]]], pad_id: int, batch_size: int, autocast: Autocast
) -> list[list[float]]:
    """Summed log-probability of each prompt's own options, one tree row per prompt (see the module)."""
    model.eval()
    backbone, head = hidden_path(model)  # type: ignore[misc]  # supported() checked it
    sdpa = getattr(unwrap(model).config, "_attn_implementation", None) == "sdpa"
    scores: list[list[float]] = [[] for _ in prompts_ids]
    sizes = [len(p) + sum(map(len, o)) for p, o in zip(prompts_ids, options_ids, strict=True)]
    order = sorted(range(len(prompts_ids)), key=sizes.__getitem__)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = _batch([_row(prompts_ids[i], options_ids[i]) for i in idx], pad_id, sdpa)
        rows, at, targets, owner = [], [], [], []  # which hidden state predicts which option token
        for b, i in enumerate(idx):
            start = len(prompts_ids[i])
            for k, opt in enumerate(options_ids[i]):
                positions = [len(prompts_ids[i]) - 1] + list(range(start, start + len(opt) - 1))
                rows += [b] * len(opt)
                at += positions
                targets += opt
                owner += [(i, k)] * len(opt)
                start += len(opt)
        with autocast():
            hidden = backbone(**batch).last_hidden_state
            logp = F.log_softmax(head(hidden[torch.tensor(rows), torch.tensor(at)]).float(), dim=-1)
        tok = logp.gather(1, torch.tensor(targets)[:, None])[:, 0].tolist()
        sums: dict[tuple[int, int], float] = {}
        for key, v in zip(owner, tok, strict=True):
            sums[key] = sums.get(key, 0.0) + v
        for i in idx:
            scores[i] = [sums.get((i, k), 0.0) for k in range(len(options_ids[i]))]
    return scores
