"""Model task types: one object per `model.task`, which knows how to load, encode, take the loss and score.

    kind = task_type(cfg.model.task)     # by config name, before a model exists
    kind = task_type_of(model)           # from a loaded model (DDP and peft wrappers unwrapped)

All three share the loop's batch format, so the loop does not know which one it trains:
- causal_lm: `labels` is the input shifted by one, -100 where no loss is taken (models/loss.py);
- seq_cls:   `labels` holds the class index at the last real token of each row, -100 elsewhere;
- seq2seq:   `input_ids` is the encoder input, `labels[:, 1:]` the decoder target (column 0 is a
             -100 placeholder, so `labels[:, 1:] != -100` counts targets as for a causal LM).

A new task type is a subclass registered in TASK_TYPES (and a name in config ModelConfig.task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from retune.data.batching import padded_width
from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError

if TYPE_CHECKING:
    from retune.config import EvalConfig, RetuneConfig, TemplateConfig
    from retune.data.dataset import TaskData


class TaskType:
    """What differs between model task types. Instances are stateless singletons (TASK_TYPES)."""

    name: ClassVar[str]  # model.task
    peft_task_type: ClassVar[str]  # peft's TaskType for the adapter config
    auto_class_name: ClassVar[str]  # the transformers Auto class that loads it
    has_lm_head: ClassVar[bool] = False  # a causal LM head over plain text: the NLL probe, distillation and
    # generation-based replay (all of which encode plain text causally) apply
    encoder_decoder: ClassVar[bool] = False  # the prompt goes to an encoder; generate returns only new tokens

    def __repr__(self) -> str:
        return f"<task type {self.name}>"

    # ------------------------------------------------------------ loading

    def auto_class(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class_name)

    def load_kwargs(self, labels: list[str] | None = None, cfg: RetuneConfig | None = None) -> dict[str, Any]:
        """Extra from_pretrained arguments (a classification head's classes; `cfg` supplies them when `labels` is None)."""
        return {}

    def from_config(self, config: Any) -> Any:
        """A model built from a transformers config (under init_empty_weights: a meta skeleton for the planner)."""
        return self.auto_class().from_config(config)

    def matches(self, base: Any) -> bool:
        """Whether a loaded (unwrapped) model is of this task type."""
        raise NotImplementedError

    # ------------------------------------------------------------ data

    def check_tasks(self, tasks: list[TaskData]) -> None:
        """Fail early on task sets this model cannot train together."""

    def encode(self, fmt: Formatter, template: TemplateConfig, record: dict, labels: list[str] | None, where: str) -> Encoded:
        """One training / validation example in the batch layout above."""
        raise NotImplementedError

    def batch_lengths(self, examples: list[Encoded]) -> tuple[int, int]:
        """(padded sequence length, padded encoder length or 0) of a micro-batch: what its activations scale with."""
        return padded_width(max(len(e.input_ids) for e in examples)), 0

    # ------------------------------------------------------------ loss

    def token_nll(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row summed NLL of the targets and per-row target counts."""
        raise NotImplementedError

    def training_loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum over rows of NLL x scale, per-row NLL detached); scale is a scalar or per-row (B,)."""
        nll, _ = self.token_nll(model, batch)
        return (nll * torch.as_tensor(scale, dtype=torch.float32)).sum(), nll.detach()

    # ------------------------------------------------------------ scoring

    def scoring(self, task: TaskData, ev: EvalConfig) -> str:
        """How a task is scored: the task's own `scoring`, else eval.scoring, else this type's default."""
        for choice in (task.scoring, ev.scoring):
            if choice != "auto":
                return choice
        return self.default_scoring(task)

    def default_scoring(self, task: TaskData) -> str:
        return "cloze" if task.choices else "likelihood" if task.labels else "generate"

    def classify(
        self, model: Any, fmt: Formatter, prompts: list[str], labels: list[str], pad_id: int, batch_size: int, autocast: Any
    ) -> list[str]:
        """The predicted label of each prompt by the model's classification head (`classifier` scoring)."""
        raise UsageError(f"classifier scoring needs model.task=seq_cls (this model is {self.name})")


class CausalLM(TaskType):
    """Decoder-only LMs: loss on the response tokens; the fused loss of models/loss.py."""

    name = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    auto_class_name = "AutoModelForCausalLM"
    has_lm_head = True

    def matches(self, base: Any) -> bool:
        return True  # the fallback: neither a classifier nor an encoder-decoder

    def encode(self, fmt: Formatter, template: TemplateConfig, record: dict, labels: list[str] | None, where: str) -> Encoded:
        return fmt.encode_record(template, record, where)

    # models/loss.py imports this module to dispatch, so its causal-LM functions are imported on use
    def token_nll(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from retune.models.loss import causal_token_nll

        return causal_token_nll(model, batch)

    def training_loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from retune.models.loss import causal_training_loss

        return causal_training_loss(model, batch, scale)


class SeqCls(TaskType):
    """An encoder with a classification head: cross-entropy on the head's logits, scored by the argmax."""

    name = "seq_cls"
    peft_task_type = "SEQ_CLS"  # peft also trains the classification head in full (modules_to_save)
    auto_class_name = "AutoModelForSequenceClassification"

    def matches(self, base: Any) -> bool:
        return type(base).__name__.endswith("ForSequenceClassification")

    def load_kwargs(self, labels: list[str] | None = None, cfg: RetuneConfig | None = None) -> dict[str, Any]:
        labels = labels or (config_labels(cfg) if cfg is not None else None)
        if not labels:
            raise UsageError("model.task=seq_cls needs labels: set data.labels (or data.tasks[0].labels)")
        # a fresh head (or the saved one of a tuned model) with named classes
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}

    def from_config(self, config: Any) -> Any:
        config.num_labels = max(getattr(config, "num_labels", 2), 2)
        return super().from_config(config)

    def check_tasks(self, tasks: list[TaskData]) -> None:
        if len({tuple(t.labels or ()) for t in tasks}) != 1:
            raise UsageError("model.task=seq_cls has one classification head: every task needs the same labels (data.tasks[i].labels)")

    def input_ids(self, fmt: Formatter, prompt_text: str) -> list[int]:
        """Encoder input: [CLS] prompt [SEP], cut on the right to data.max_length (the instruction stays)."""
        return fmt.tok(prompt_text, truncation=True, max_length=fmt.data.max_length).input_ids

    def encode(self, fmt: Formatter, template: TemplateConfig, record: dict, labels: list[str] | None, where: str) -> Encoded:
        prompt, response, system = render(template, record)
        text = fmt.prompt_text(prompt, system)
        if not labels:
            raise UsageError(f"{where}: model.task=seq_cls needs labels (data.labels or data.tasks[i].labels)")
        if response not in labels:
            raise UsageError(f"{where}: response '{response}' is not one of the labels {labels}; fix data.labels or the template")
        ids = self.input_ids(fmt, text)
        return Encoded(ids, [-100] * (len(ids) - 1) + [labels.index(response)], len(ids))

    def token_nll(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        target_mask = labels != -100  # (B, T): one position per row
        if bool((target_mask.sum(dim=1) != 1).any()):
            raise UsageError(
                "a seq_cls model scores class labels only; token-level text scoring (e.g. retain.probe) does not apply "
                "to it: set retain.probe: null"
            )
        y = labels[target_mask]  # (B,)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, n_labels)
        return F.cross_entropy(logits.float(), y, reduction="none"), target_mask.sum(dim=1)

    def scoring(self, task: TaskData, ev: EvalConfig) -> str:
        return "classifier"  # the head's argmax, whatever task.scoring / eval.scoring say

    @torch.no_grad()
    def classify(
        self, model: Any, fmt: Formatter, prompts: list[str], labels: list[str], pad_id: int, batch_size: int, autocast: Any
    ) -> list[str]:
        """Argmax class of each prompt, batched with right padding."""
        model.eval()
        inputs = [self.input_ids(fmt, p) for p in prompts]
        out: list[str] = []
        for s in range(0, len(inputs), batch_size):
            chunk = inputs[s : s + batch_size]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, x in enumerate(chunk):
                ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
            with autocast():
                out += [labels[i] for i in model(input_ids=ids, attention_mask=mask).logits.argmax(dim=-1).tolist()]
        return out


class Seq2Seq(TaskType):
    """Encoder-decoder (T5): the prompt goes to the encoder, the response is the decoder's target; scored by generation."""

    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"
    auto_class_name = "AutoModelForSeq2SeqLM"
    encoder_decoder = True

    def matches(self, base: Any) -> bool:
        return bool(getattr(base.config, "is_encoder_decoder", False))

    def encode(self, fmt: Formatter, template: TemplateConfig, record: dict, labels: list[str] | None, where: str) -> Encoded:
        prompt, response, system = render(template, record)
        # the tokenizer adds T5's </s> to both sides
        ids = fmt.tok(fmt.prompt_text(prompt, system), truncation=True, max_length=fmt.data.max_length).input_ids
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

    def batch_lengths(self, examples: list[Encoded]) -> tuple[int, int]:
        return padded_width(max(len(e.labels) for e in examples)), padded_width(max(len(e.input_ids) for e in examples))

    def token_nll(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["labels"][:, 1:].contiguous()  # (B, L): decoder labels; T5 shifts them right into its decoder input
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=target).logits  # (B, L, V)
        tok_loss = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none", ignore_index=-100)  # (B, L)
        return tok_loss.sum(dim=1), (target != -100).sum(dim=1)

    def default_scoring(self, task: TaskData) -> str:
        return "generate"  # label likelihood is implemented for decoder-only models


CAUSAL_LM, SEQ_CLS, SEQ2SEQ = CausalLM(), SeqCls(), Seq2Seq()
TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (CAUSAL_LM, SEQ_CLS, SEQ2SEQ)}
_DETECTION_ORDER = (SEQ_CLS, SEQ2SEQ, CAUSAL_LM)  # a BART classifier is an encoder-decoder too: the head decides first


def task_type(name: str) -> TaskType:
    """The task type of a config's `model.task`."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise UsageError(f"model.task '{name}' is not a task type (known: {', '.join(TASK_TYPES)})") from None


def task_type_of(model: Any) -> TaskType:
    """The task type of a loaded model, through data-parallel and peft wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return next(t for t in _DETECTION_ORDER if t.matches(base))


def config_labels(cfg: RetuneConfig) -> list[str]:
    """The classes of a seq_cls config: the first task's labels, or its built-in dataset's."""
    from retune.data.builtin import BUILTIN_DATASETS

    task = cfg.data.task_list()[0]
    src = task.train if task.train is not None else task.test
    path = src if isinstance(src, str) else getattr(src, "path", "")
    labels = task.labels or (BUILTIN_DATASETS[path].labels if path in BUILTIN_DATASETS else None)
    if not labels:
        raise UsageError("model.task=seq_cls needs labels: set data.labels (or data.tasks[0].labels)")
    return list(labels)
