"""The data section: sources, templates, tasks, and how several tasks mix.

The keys that say what one task's data is (TaskDataConfig: train ... shots) are declared
once and shared: `data:` has them as the one-task shorthand, each `data.tasks[i]` has its own.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from retune.config.sections import Metric, Scoring, _Strict

# what `data.train` is when neither it nor data.tasks is given: the quickstart's movie reviews
DEFAULT_TRAIN = "rotten-tomatoes"


class SourceConfig(_Strict):
    """A data source written out as a mapping; a plain string is short for {path: <string>}."""

    path: str
    """A file (.jsonl .json .csv .parquet), a saved `datasets` folder, or a built-in dataset name."""
    split: str | None = None
    """For built-in datasets and `datasets` folders: train, validation or test."""
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = "auto"
    """File format. auto: from the suffix (.jsonl/.ndjson, .json, .csv, .parquet/.pq; a folder is hf,
    a saved `datasets` folder)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N records (after the source's own deterministic order)."""
    encoding: str = "utf-8"
    """Text encoding of a JSONL, JSON or CSV file, e.g. latin-1, cp1252, utf-16 (any name Python's
    codecs know). A UTF-8 byte-order mark is skipped."""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"'{v}' is not a text encoding Python knows; use e.g. utf-8, latin-1, cp1252 or utf-16") from None
        return v


class TemplateConfig(_Strict):
    """How a record becomes a prompt and a response."""

    prompt: str = "{prompt}"
    """The prompt, with {column} fields filled from each record."""
    response: str = "{response}"
    """The expected output, with {column} fields. Loss covers only this part by default."""
    system: str | None = None
    """An optional system message (chat templates only)."""


Source = str | SourceConfig


def source_path(src: Source) -> str:
    return src if isinstance(src, str) else src.path


class TaskDataConfig(_Strict):
    """The keys that say what one task's data is. `data:` has them as the one-task shorthand; with
    `data.tasks`, each task has its own (and the shorthand keys must be left out)."""

    train: Source | None = None
    """Training source: a file, a saved `datasets` folder, a built-in dataset name, or a mapping
    {path, split, format, limit, encoding}. data.train defaults to rotten-tomatoes; a task of
    data.tasks without one is evaluation-only (e.g. humaneval, which has only a test split): scored
    before and after, never trained on."""
    validation: Source | None = None
    """Validation set (validation loss, early stopping). If absent: the built-in's validation split,
    or `validation_split` of the training data, or (evaluation-only tasks) the test set."""
    test: Source | None = None
    """Held-out set for the task metric (base vs tuned). If absent: the built-in's test split, or the
    validation set."""
    validation_split: float = Field(0.1, gt=0, lt=1)
    """Share of a user training file held out for validation when no validation set is given."""
    columns: dict[str, str] = {}
    """Rename columns before templating: {new_name: column_in_file}."""
    template: TemplateConfig | None = None
    """Prompt template. If absent: the built-in dataset's own template (user data needs one)."""
    labels: list[str] | None = None
    """For label tasks: the allowed responses, scored by comparing their likelihoods. Default: the
    built-in's labels."""
    max_train_samples: int | None = Field(None, ge=1)
    """Use only the first N training records (deterministic order)."""
    max_eval_samples: int | None = Field(None, ge=1)
    """Cap on validation and test examples (the first N in deterministic order; for mmlu and mmlu-cloze
    any such prefix is stratified by topic)."""
    max_val_samples: int | None = Field(None, ge=1)
    """Cap on validation examples alone (the validation loss measured during and after training), when
    it should differ from max_eval_samples, e.g. a smaller set to watch training by. Default: max_eval_samples."""
    choices: list[str] | None = None
    """Columns holding each option's text, for multiple-choice tasks scored as cloze: the option whose
    text has the highest likelihood per character after the prompt is the prediction, compared with
    the response. Default: the built-in's (mmlu-cloze: answer_a ... answer_d)."""
    shots: int = Field(0, ge=0)
    """k-shot prompts: each scored prompt is preceded by k solved examples from the task's training
    split (the built-in's train split for an evaluation-only task: mmlu's carved pool of 5 per topic),
    the first k of the same group (mmlu: topic) where the data has groups. A paragraph every prompt
    opens with (mmlu's header) is written once. 0: zero-shot."""


# the data keys that describe one task: with data.tasks, each task has its own
TASK_SHORTHAND = tuple(TaskDataConfig.model_fields)


class TaskConfig(TaskDataConfig):
    """One task of a multi-task run (`data.tasks`), a retained task (`retain.tasks`) or a stage's task:
    its data, template and scoring."""

    name: str | None = None
    """Name in logs and summary.json. Default: the built-in dataset's name or the training (else test)
    file's stem."""
    metric: Metric = "auto"
    """accuracy | exact_match | rouge_l | chrf | bleu | syntax_valid | code (syntax + chrF) |
    pass_at_1 (runs generated code against tests in a sandbox). auto: eval.metric, else the
    built-in's metric, else accuracy with labels, ROUGE-L without."""
    scoring: Scoring = "auto"
    """likelihood: the label with the highest log-probability; cloze: the option of `choices` with the
    highest log-probability per character; generate: decoding (greedy unless eval.temperature > 0).
    auto: eval.scoring, else cloze with choices, likelihood with labels, generate without."""
    weight: float | None = Field(None, gt=0)
    """Sampling share in the training mix (data.mixing: fractions); shares are normalised to sum to 1."""
    loss_weight: float = Field(1.0, ge=0)
    """Multiplies this task's token losses (1: every labelled token counts the same)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Generation length for this task. Default: eval.max_new_tokens."""
    stop: list[str] | None = None
    """Generation stops at the first of these strings (cut exactly), e.g. ["\\n```\\n", "\\nif __name__"]
    for code. Default: none besides the end-of-sequence token."""

    # where this task sits in the config ("data", "data.tasks[2]", "stages[0].task"), set by the
    # enclosing section's validator: error messages name the key to fix
    _where: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.train is None and self.test is None:
            raise ValueError("a task needs a train source, or a test source for an evaluation-only task (e.g. {test: humaneval})")
        return self

    def resolved_name(self) -> str:
        """`name`, else the stem of the train (else test) source: a built-in's name, or a file's stem."""
        anchor = self.train if self.train is not None else self.test
        return self.name or (Path(source_path(anchor)).stem if anchor is not None else "?")

    def key(self, field: str) -> str:
        """The config key of one of this task's fields, e.g. data.tasks[1].train."""
        return f"{self._where}.{field}" if self._where else field


class DataConfig(TaskDataConfig):
    """One task through the keys train ... shots (the shorthand), or several under `tasks`.
    The keys from `format` on apply to every task."""

    format: Literal["chat", "plain"] = "chat"
    """chat: wrap prompt/response with the tokenizer's chat template (if it has one); plain: raw text."""
    messages_column: str | None = None
    """Train on conversations: a column of [{role, content}, ...]; the last assistant turn is the response."""
    max_length: int = Field(256, ge=8)
    """Token limit per example. Prompts are cut from the left; a response is never dropped silently."""
    truncate_response: bool = False
    """A response longer than max_length is an error naming the record; true: cut it (and say how many)."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens."""
    packing: Literal["auto"] | bool = "auto"
    """Pack several training examples into each row of up to max_length tokens, each attending only to
    itself (position ids restart per example, block-diagonal causal mask): no compute on padding, fewer
    and fuller micro-batches. Exact: the loss and gradients are those of padded batches, and a step
    takes the same batch_size x grad_accum examples. auto: on for supervised stages of a causal LM
    whose attention keeps packed examples apart (checked on the loaded model), else off. true: as auto,
    but an error where it cannot be exact (model.task seq_cls / seq2seq, prefix / prompt tuning,
    preference stages); false: pad each micro-batch to its longest example."""
    shuffle_seed: int = 0
    """Seed for sampling / splitting user data; training order uses trainer.seed."""
    tasks: list[TaskConfig] | None = None
    """Several tasks in one run, each with its own sources, template, metric and weights. Every task is
    scored before and after training. Replaces the single-task keys (train ... shots),
    which must then be left out."""
    mixing: Literal["auto", "proportional", "fractions", "temperature"] = "auto"
    """How an epoch mixes the tasks' training examples. proportional: each task by its size (all its
    examples once); fractions: by the tasks' `weight`s, normalised; temperature: size**(1/T)
    (T = mixing_temperature; T=1 is proportional, large T tends to equal shares). auto: fractions
    when any task has a weight, else proportional. Each epoch draws a fresh sample from trainer.seed."""
    mixing_temperature: float = Field(2.0, ge=1)
    """T of temperature mixing (Raffel et al. 2020, T5 sec. 3.5.2)."""
    epoch_size: int | None = Field(None, ge=1)
    """Training examples per epoch of the mix. Default: the sum of the tasks' training sizes."""
    oversample: bool = True
    """When a task's share needs more examples than it has: true repeats its examples (with a
    warning); false caps it at its size (its share shrinks, the others' grow)."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.tasks is None:
            if self.train is None:
                self.__dict__["train"] = DEFAULT_TRAIN
            return self
        # A shorthand key left at its default is no clash: run directories written before to_yaml
        # dropped them carry every default (data.train as rotten-tomatoes).
        defaults = {k: f.get_default(call_default_factory=True) for k, f in TaskDataConfig.model_fields.items()}
        clash = [k for k in TASK_SHORTHAND if getattr(self, k) not in (defaults[k],) + ((DEFAULT_TRAIN,) if k == "train" else ())]
        if clash:
            raise ValueError(f"data.{clash[0]} cannot be combined with data.tasks: set it on each task (data.tasks[i].{clash[0]})")
        self.__dict__["train"] = None
        if not self.tasks:
            raise ValueError("data.tasks is empty: list at least one task, e.g. tasks: [{train: rotten-tomatoes}]")
        if not any(t.train is not None for t in self.tasks):
            raise ValueError("data.tasks: no task has a train source; at least one task must be trained on")
        if self.mixing == "fractions" and any(t.weight is None for t in self.tasks if t.train is not None):
            raise ValueError("data.mixing=fractions needs a weight on every task with a train source (data.tasks[i].weight)")
        seen: dict[str, int] = {}
        for i, t in enumerate(self.tasks):
            t._where = f"data.tasks[{i}]"
            name = t.resolved_name()
            if name in seen:
                raise ValueError(
                    f"data.tasks[{seen[name]}] and data.tasks[{i}] are both named '{name}'; give them distinct names (data.tasks[{i}].name)"
                )
            seen[name] = i
        return self

    def task_list(self) -> list[TaskConfig]:
        """The tasks of this config; the single-task keys become one task."""
        if self.tasks is not None:
            return list(self.tasks)
        task = TaskConfig(**{k: getattr(self, k) for k in TASK_SHORTHAND})
        task._where = "data"
        return [task]
