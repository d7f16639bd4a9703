"""Batches: a seeded order per epoch, optional grouping by length, padding collation, and what a
forward takes from a batch (padded here, or packed: data/packing.py)."""

from __future__ import annotations

from typing import Any

import torch

from retune.data.templates import Encoded


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The same permutation for the same (seed, epoch): what makes resume exact."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batch_indices(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True) -> list[list[int]]:
    order = epoch_order(len(lengths), seed, epoch)
    if group_by_length:
        # Sort inside windows of 32 batches: little padding, yet batches still differ between epochs.
        window = batch_size * 32
        order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda j: -lengths[j])]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:  # shuffle the batches so long ones are not always first in a window
        perm = epoch_order(len(batches), seed + 1, epoch)
        batches = [batches[p] for p in perm]
    return batches


# Padded widths are rounded up to a multiple of this. Every distinct micro-batch shape leaves
# per-shape state in the process for the rest of the run (oneDNN's primitive cache, the malloc's
# size-class caches): classify-minilm's 588 steps over widths 3..72 grew from 849 to 1,474 MB
# (tcmalloc), and to 985 MB with widths rounded to 8, for 8% more training time (75 -> 80 s);
# benchmarks/results/plan.md. HF's collators offer the same (pad_to_multiple_of=8).
PAD_MULTIPLE = 8


def padded_width(n: int) -> int:
    """The width a batch whose longest row has n tokens is padded to."""
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = padded_width(max(len(e.input_ids) for e in examples))
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    # labels are as long as the input for causal LMs; seq2seq targets have their own length
    labels = torch.full((len(examples), padded_width(max(len(e.labels) for e in examples))), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):  # right padding: positions stay 0..n-1 for every example
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if any(e.weight != 1.0 for e in examples):  # per-task loss weights, one per row (B,)
        batch["weights"] = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a forward takes from a batch: the padded layout's attention mask, or a packed batch's
    position ids (data/packing.py; no mask, so transformers builds the block-diagonal one, and no cache,
    which would hide the packing from it)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def next_token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T-1) bool: positions whose next token is a real token of the same example (what a causal LM
    predicts there is part of that example), in either layout."""
    if "example" in batch:
        ex = batch["example"]
        return (ex[:, 1:] == ex[:, :-1]) & (ex[:, 1:] > 0)
    return batch["attention_mask"][:, 1:].bool()
