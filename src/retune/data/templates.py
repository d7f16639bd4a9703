"""Prompt templates: records -> (prompt, response) text -> token ids, with the loss mask.

Two renderings share one code path: a Ludwig-style `{column}` template, optionally wrapped in the
tokenizer's chat template (`data.format: chat`), or a column of chat messages.

Special tokens, one rule for every path that turns text into ids for a likelihood or a prompt
(training, validation loss, label likelihood, generation, replay, distillation, the probe, serving,
chat): text that starts a sequence is tokenized as the tokenizer itself would (`text_ids`): a BOS where
the tokenizer adds one (Llama 2, Gemma), none where it does not (SmolLM2, Qwen); a chat template's text
carries its own markers, so it is tokenized without adding any. Text that continues a sequence (a
response, a label) never gets them. When a prompt is cut to fit data.max_length it loses tokens from
its left, but a BOS the tokenizer adds stays at position 0: a model trained with BOS never sees a
sequence without it. The general-text probe is cut on the right, which keeps the BOS too.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from retune.config import DataConfig, TemplateConfig
from retune.errors import UsageError


def template_fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def check_fields(template: TemplateConfig, records: list[dict], where: str) -> None:
    """Fail early, naming the columns, when a {field} is missing from the data."""
    columns = set(records[0])
    for part in ("prompt", "response", "system"):
        text = getattr(template, part) or ""
        for name in template_fields(text):
            if name not in columns:
                raise UsageError(
                    f"template {part} field {{{name}}} is not a column of {where} "
                    f"(available columns: {', '.join(sorted(columns))}); fix data.template or map it with data.columns"
                )


def render(template: TemplateConfig, record: dict[str, Any]) -> tuple[str, str, str | None]:
    values = {k: "" if v is None else v for k, v in record.items()}
    system = template.system.format_map(values) if template.system else None
    return template.prompt.format_map(values), str(template.response.format_map(values)), system


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    prompt_len: int
    weight: float = 1.0  # the task's loss weight (data.tasks[i].loss_weight)


def text_ids(tok: Any, text: str, chat: bool = False) -> list[int]:
    """The ids of text that starts a sequence, by the module's rule: the tokenizer's own special tokens
    for plain text, none added for a chat template's text (it carries its own)."""
    return tok(text, add_special_tokens=not chat).input_ids


def adds_bos(tok: Any) -> bool:
    """Whether the tokenizer puts a BOS in front of plain text."""
    bos = getattr(tok, "bos_token_id", None)
    ids = tok("a").input_ids
    return bos is not None and bool(ids) and ids[0] == bos


class Formatter:
    """Turns prompts and responses into token ids exactly the same way for training and scoring."""

    def __init__(self, tokenizer: Any, data: DataConfig):
        self.tok = tokenizer
        self.data = data
        self.chat = data.format == "chat" and bool(getattr(tokenizer, "chat_template", None))
        self.cut_responses = 0
        self.keep = 1 if adds_bos(tokenizer) else 0  # leading tokens a left cut keeps (the tokenizer's BOS)

    # -- text
    def prompt_text(self, prompt: str, system: str | None = None, messages: list[dict] | None = None) -> str:
        if messages is None:
            if not self.chat:
                return prompt
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def response_text(self, prompt: str, response: str, system: str | None = None, messages: list[dict] | None = None) -> str:
        if not self.chat and messages is None:
            return response + (self.tok.eos_token or "")
        head = self.prompt_text(prompt, system, messages)
        if messages is None:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        full = self.tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):  # a template that rewrites earlier turns: fall back to plain response
            return response + (self.tok.eos_token or "")
        return full[len(head) :]

    # -- ids
    def prompt_ids(self, text: str) -> list[int]:
        return text_ids(self.tok, text, self.chat)

    def encode(self, prompt: str, response: str, system: str | None = None, messages: list[dict] | None = None, where: str = "") -> Encoded:
        p = self.prompt_ids(self.prompt_text(prompt, system, messages))
        r = self.tok(self.response_text(prompt, response, system, messages), add_special_tokens=False).input_ids
        if not response.strip() or not r:
            raise UsageError(f"{where}: the response is empty; every training example needs an expected output")
        limit = self.data.max_length
        room = limit - 1  # keep at least one prompt token so the response is conditioned on something
        if len(r) > room:
            if not self.data.truncate_response:
                raise UsageError(
                    f"{where}: the response alone is {len(r)} tokens, over data.max_length={limit}; truncation would "
                    f"drop it; raise data.max_length or set data.truncate_response: true"
                )
            r = r[:room]
            self.cut_responses += 1
        if len(p) + len(r) > limit:  # cut the prompt from the left (its end leads into the response), keeping a BOS
            p = p[: self.keep] + p[len(p) + len(r) - limit + self.keep :]
        labels = (p if self.data.train_on_prompt else [-100] * len(p)) + r
        return Encoded(p + r, list(labels), len(p))

    def encode_record(self, template: TemplateConfig, record: dict, where: str) -> Encoded:
        col = self.data.messages_column
        if col:
            msgs = record.get(col)
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise UsageError(f"{where}: column '{col}' must be a list of messages ending with an assistant turn")
            return self.encode("", msgs[-1]["content"], messages=msgs[:-1], where=where)
        prompt, response, system = render(template, record)
        return self.encode(prompt, response, system, where=where)

    def record_prompt(self, template: TemplateConfig, record: dict) -> tuple[str, str]:
        """(prompt text fed to the model, reference response) for scoring."""
        col = self.data.messages_column
        if col:
            msgs = record[col]
            return self.prompt_text("", messages=msgs[:-1]), msgs[-1]["content"]
        prompt, response, system = render(template, record)
        return self.prompt_text(prompt, system), response
