"""Model task types beyond causal LMs: sequence classification (encoder + head) and seq2seq (T5).

All three share the loop's batch format, so the loop does not know which one it trains:
- causal_lm: `labels` is the input shifted by one, -100 where no loss is taken (models/loss.py);
- seq_cls:   `labels` holds the class index at the last real token of each row, -100 elsewhere;
- seq2seq:   `input_ids` is the encoder input, `labels[:, 1:]` the decoder target (column 0 is a
             -100 placeholder, so `labels[:, 1:] != -100` counts targets as for a causal LM).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError

# peft task type of each model.task
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}


def auto_class(kind: str) -> Any:
    import transformers

    return {
        "causal_lm": transformers.AutoModelForCausalLM,
        "seq_cls": transformers.AutoModelForSequenceClassification,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[kind]


def model_kind(model: Any) -> str:
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):  # data-parallel training wraps the model
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__.endswith("ForSequenceClassification"):
        return "seq_cls"
    if getattr(base.config, "is_encoder_decoder", False):
        return "seq2seq"
    return "causal_lm"


# ---------------------------------------------------------------- encoding


def classifier_input(fmt: Formatter, prompt_text: str) -> list[int]:
    """Encoder input: [CLS] prompt [SEP], cut on the right to data.max_length (the instruction stays)."""
    return fmt.tok(prompt_text, truncation=True, max_length=fmt.data.max_length).input_ids


def encode(kind: str, fmt: Formatter, template: Any, record: dict, labels: list[str] | None, where: str) -> Encoded:
    """One training/validation example of a seq_cls or seq2seq task (causal LMs use Formatter.encode_record)."""
    prompt, response, system = render(template, record)
    text = fmt.prompt_text(prompt, system)
    if kind == "seq_cls":
        if not labels:
            raise UsageError(f"{where}: model.task=seq_cls needs labels (data.labels or data.tasks[i].labels)")
        if response not in labels:
            raise UsageError(f"{where}: response '{response}' is not one of the labels {labels}; fix data.labels or the template")
        ids = classifier_input(fmt, text)
        return Encoded(ids, [-100] * (len(ids) - 1) + [labels.index(response)], len(ids))
    # seq2seq: the tokenizer adds T5's </s> to both sides
    ids = fmt.tok(text, truncation=True, max_length=fmt.data.max_length).input_ids
    target = fmt.tok(response, add_special_tokens=True).input_ids
    if len(target) > fmt.data.max_length:
        if not fmt.data.truncate_response:
            raise UsageError(
                f"{where}: the response is {len(target)} tokens, over data.max_length={fmt.data.max_length}; "
                "raise data.max_length or set data.truncate_response: true"
            )
        target = target[: fmt.data.max_length]
        fmt.cut_responses += 1
    return Encoded(ids, [-100, *target], len(ids))


# ---------------------------------------------------------------- loss


def token_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL and per-row target counts, for seq_cls and seq2seq models."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if model_kind(model) == "seq_cls":
        target_mask = labels != -100  # (B, T): one position per row
        if bool((target_mask.sum(dim=1) != 1).any()):
            raise UsageError(
                "a seq_cls model scores class labels only; token-level text scoring (e.g. retain.probe) does not apply "
                "to it: set retain.probe: null"
            )
        y = labels[target_mask]  # (B,)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, n_labels)
        return F.cross_entropy(logits.float(), y, reduction="none"), target_mask.sum(dim=1)
    target = labels[:, 1:].contiguous()  # (B, L): decoder labels; T5 shifts them right into its decoder input
    logits = model(input_ids=ids, attention_mask=mask, labels=target).logits  # (B, L, V)
    tok_loss = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none", ignore_index=-100)  # (B, L)
    return tok_loss.sum(dim=1), (target != -100).sum(dim=1)


def training_loss(model: Any, batch: dict[str, torch.Tensor], scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over rows of NLL x scale, per-row NLL detached); scale is a scalar or per-row (B,)."""
    nll, _ = token_nll(model, batch)
    return (nll * torch.as_tensor(scale, dtype=torch.float32)).sum(), nll.detach()


# ---------------------------------------------------------------- prediction


@torch.no_grad()
def classify(model: Any, inputs: list[list[int]], pad_id: int, batch_size: int, autocast: Any) -> list[int]:
    """Argmax class index per input, batched with right padding."""
    model.eval()
    out: list[int] = []
    for s in range(0, len(inputs), batch_size):
        chunk = inputs[s : s + batch_size]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(chunk):
            ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
        with autocast():
            out += model(input_ids=ids, attention_mask=mask).logits.argmax(dim=-1).tolist()
    return out


def config_labels(cfg: Any) -> list[str]:
    """The classes of a seq_cls config: the first task's labels, or its built-in dataset's."""
    from retune.data.builtin import BUILTIN_DATASETS

    task = cfg.data.task_list()[0]
    src = task.train if task.train is not None else task.test
    path = src if isinstance(src, str) else getattr(src, "path", "")
    labels = task.labels or (BUILTIN_DATASETS[path].labels if path in BUILTIN_DATASETS else None)
    if not labels:
        raise UsageError("model.task=seq_cls needs labels: set data.labels (or data.tasks[0].labels)")
    return list(labels)
