"""What `retune data list` and `retune data show` print: built-in datasets and examples as the model sees them."""

from __future__ import annotations

import difflib
from typing import Any

from retune.config import DataConfig
from retune.data.builtin import BUILTIN_DATASETS, BuiltinDataset, load_builtin
from retune.data.templates import Formatter, render
from retune.errors import UsageError


def get_builtin(name: str) -> BuiltinDataset:
    if name not in BUILTIN_DATASETS:
        hint = difflib.get_close_matches(name, list(BUILTIN_DATASETS), n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"built-ins: {', '.join(BUILTIN_DATASETS)}"
        raise UsageError(f"unknown built-in dataset '{name}' ({fix})")
    return BUILTIN_DATASETS[name]


def list_lines() -> list[str]:
    """One block per built-in: split sizes, metric, split key, source. A missing source is reported, not fatal."""
    out = []
    for ds in BUILTIN_DATASETS.values():
        try:
            sizes = ", ".join(f"{s} {len(load_builtin(ds.name, s)):,}" for s in ds.splits)
        except UsageError as e:
            sizes = f"unavailable: {e}"
        split = f"split by {ds.group}" if ds.group else "evaluation only"
        out.append(f"{ds.name}\n  {ds.description}\n  {sizes}; metric {ds.metric}; {split}\n  source: {ds.source}")
    return out


def show_examples(name: str, split: str | None = None, n: int = 3, tokenizer: Any = None) -> list[str]:
    """The first n records of a split rendered through the default template; with a tokenizer, exactly
    the text the model is trained on (chat template, end-of-turn marker) and its token count."""
    ds = get_builtin(name)
    records = load_builtin(name, split or ds.splits[0])[:n]
    fmt = Formatter(tokenizer, DataConfig()) if tokenizer is not None else None
    out = []
    for r in records:
        prompt, response, system = render(ds.template, r)
        if fmt is None:
            out.append(f"--- prompt\n{prompt}\n--- response\n{response}")
        else:
            head, tail = fmt.prompt_text(prompt, system), fmt.response_text(prompt, response, system)
            n_tok = len(fmt.prompt_ids(head)) + len(tokenizer(tail, add_special_tokens=False).input_ids)
            out.append(f"--- model input ({n_tok} tokens)\n{head}\n--- target\n{tail}")
    return out
