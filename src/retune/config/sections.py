"""Config sections: model, adapter, data (sources, templates, tasks), eval, trainer, output."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    base: str = "smollm2-135m-instruct"
    """A built-in name (`retune models`), a local Hugging Face folder, or a hub id."""
    task: Literal["causal_lm", "seq_cls", "seq2seq"] = "causal_lm"
    """What the model predicts. causal_lm: next token (decoder LMs such as SmolLM2, Llama);
    seq_cls: one label per input through a classification head (encoders such as MiniLM/BERT; needs
    labels; LoRA task type SEQ_CLS, the head is trained in full); seq2seq: encoder-decoder (T5),
    the response is the decoder's target (LoRA task type SEQ_2_SEQ_LM, e.g. target_modules [q, v])."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Precision of the frozen base weights. auto: bf16 where the CPU/GPU has fast bf16, else fp32."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel. auto: eager on CPU (measured faster than SDPA's CPU kernel for training at
    a few hundred tokens), sdpa on GPU."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `base` is a hub id."""
    trust_remote_code: bool = False


# Adapter kinds with first-class options; any other peft method is reached by its peft name
# (e.g. "loha", "lokr", "adalora", "boft") with its arguments under `options`.
AdapterType = str


class AdapterConfig(_Strict):
    type: AdapterType = "lora"
    """full | lora | qlora | dora | ia3 | prefix_tuning | prompt_tuning | any other peft method name."""
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "v_proj"]
    """Module names to adapt, or "all-linear" for every linear layer but the output head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    num_virtual_tokens: int = Field(20, ge=1)
    """Prefix / prompt tuning: number of learned virtual tokens."""
    quantization: Literal["none", "nf4", "fp4", "int8"] = "none"
    """Load the frozen base quantised (bitsandbytes). qlora implies nf4."""
    double_quant: bool = True
    """4-bit: quantise the quantisation constants too (QLoRA's double quantisation)."""
    compute_dtype: Literal["bf16", "fp32"] = "bf16"
    """4-bit: dtype the dequantised weights are multiplied in."""
    options: dict[str, Any] = {}
    """Extra keyword arguments passed to the peft config class as they are."""

    @model_validator(mode="after")
    def _check(self) -> AdapterConfig:
        if self.type == "qlora" and self.quantization == "none":
            self.__dict__["quantization"] = "nf4"
        if self.type == "full" and self.quantization != "none":
            raise ValueError(
                "adapter.type=full cannot train a quantised base; use adapter.type=lora (or qlora) or set adapter.quantization=none"
            )
        return self


class SourceConfig(_Strict):
    path: str
    """A file (.jsonl .json .csv .parquet), a saved `datasets` folder, or a built-in dataset name."""
    split: str | None = None
    """For built-in datasets and `datasets` folders: train, validation or test."""
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = "auto"
    limit: int | None = Field(None, ge=1)
    """Use only the first N records (after the source's own deterministic order)."""


class TemplateConfig(_Strict):
    prompt: str = "{prompt}"
    """The prompt, with {column} fields filled from each record."""
    response: str = "{response}"
    """The expected output, with {column} fields. Loss covers only this part by default."""
    system: str | None = None
    """An optional system message (chat templates only)."""


Metric = Literal["auto", "accuracy", "exact_match", "rouge_l", "chrf", "bleu", "syntax_valid", "code", "pass_at_1"]
Scoring = Literal["auto", "likelihood", "generate"]


class TaskConfig(_Strict):
    """One task of a multi-task run (`data.tasks`), or a retention task: its data, template and scoring."""

    name: str | None = None
    """Name in logs and summary.json. Default: the built-in dataset's name or the training file's stem."""
    train: str | SourceConfig | None = None
    """Training source (file, `datasets` folder or built-in). None: an evaluation-only task (e.g.
    humaneval, which has only a test split); it is scored before and after but never trained on."""
    validation: str | SourceConfig | None = None
    """Validation set (validation loss). If absent: the built-in's validation split, or
    `validation_split` of the training data, or (evaluation-only tasks) the test set."""
    test: str | SourceConfig | None = None
    """Held-out set for the task metric. If absent: the built-in's test split, or the validation set."""
    validation_split: float = Field(0.1, gt=0, lt=1)
    """Share of a user training file held out for validation when no validation set is given."""
    columns: dict[str, str] = {}
    """Rename columns before templating: {new_name: column_in_file}."""
    template: TemplateConfig | None = None
    """Prompt template. If absent: the built-in dataset's own template."""
    labels: list[str] | None = None
    """For label tasks: the allowed responses. Default: the built-in's labels."""
    metric: Metric = "auto"
    """accuracy | exact_match | rouge_l | chrf | bleu | syntax_valid | code (syntax + chrF) |
    pass_at_1 (runs generated code against tests in a sandbox). auto: eval.metric, else the
    built-in's metric, else accuracy with labels, ROUGE-L without."""
    scoring: Scoring = "auto"
    """likelihood: the label with the highest log-probability; generate: decoding (greedy unless
    eval.temperature > 0). auto: eval.scoring, else likelihood with labels, generate without."""
    weight: float | None = Field(None, gt=0)
    """Sampling share in the training mix (data.mixing: fractions); shares are normalised to sum to 1."""
    loss_weight: float = Field(1.0, ge=0)
    """Multiplies this task's token losses (1: every labelled token counts the same)."""
    max_train_samples: int | None = Field(None, ge=1)
    """Use only the first N training records (deterministic order)."""
    max_eval_samples: int | None = Field(None, ge=1)
    """Cap on validation and test examples (the first N in deterministic order)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Generation length for this task. Default: eval.max_new_tokens."""
    stop: list[str] | None = None
    """Generation stops at the first of these strings (cut exactly), e.g. ["\\n```\\n", "\\nif __name__"]
    for code. Default: none besides the end-of-sequence token."""


# data keys that describe one task: with data.tasks, each task has its own
TASK_SHORTHAND = ("train", "validation", "test", "columns", "template", "labels", "max_train_samples", "max_eval_samples")


class DataConfig(_Strict):
    """One task through the keys train ... labels (the shorthand), or several under `tasks`. Keys
    below `labels` (format, max_length, ...) and the mixing keys apply to every task."""

    train: str | SourceConfig = "rotten-tomatoes"
    """Training source of the single-task shorthand (ignored names with `tasks`: set them per task)."""
    validation: str | SourceConfig | None = None
    """Validation set for loss / early stopping. If absent: the built-in's validation split, or
    `validation_split` of the training data."""
    test: str | SourceConfig | None = None
    """Held-out set for the task metric (base vs tuned). If absent: the built-in's test split,
    or the validation set."""
    validation_split: float = Field(0.1, gt=0, lt=1)
    columns: dict[str, str] = {}
    """Rename columns before templating: {new_name: column_in_file}."""
    template: TemplateConfig | None = None
    """Prompt template. If absent: the built-in dataset's own template."""
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
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    """Cap on validation and test examples (the first N in deterministic order)."""
    labels: list[str] | None = None
    """For label tasks: the allowed responses (scored by comparing their likelihoods)."""
    shuffle_seed: int = 0
    """Seed for sampling / splitting user data; training order uses trainer.seed."""
    tasks: list[TaskConfig] | None = None
    """Several tasks in one run, each with its own sources, template, metric and weights. Every task is
    scored before and after training. Replaces the single-task keys (train, validation, test, columns,
    template, labels, max_train_samples, max_eval_samples), which must then be left out."""
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
            return self
        # a shorthand key left at its default is no clash: run directories written before to_yaml
        # dropped them carry every default
        fields = type(self).model_fields
        clash = [
            k for k in TASK_SHORTHAND if k in self.model_fields_set and getattr(self, k) != fields[k].get_default(call_default_factory=True)
        ]
        if clash:
            raise ValueError(f"data.{clash[0]} cannot be combined with data.tasks: set it on each task (data.tasks[i].{clash[0]})")
        if not self.tasks:
            raise ValueError("data.tasks is empty: list at least one task, e.g. tasks: [{train: rotten-tomatoes}]")
        if not any(t.train is not None for t in self.tasks):
            raise ValueError("data.tasks: no task has a train source; at least one task must be trained on")
        if self.mixing == "fractions" and any(t.weight is None for t in self.tasks if t.train is not None):
            raise ValueError("data.mixing=fractions needs a weight on every task with a train source (data.tasks[i].weight)")
        return self

    def task_list(self) -> list[TaskConfig]:
        """The tasks of this config; the single-task keys become one task."""
        if self.tasks is not None:
            return list(self.tasks)
        return [
            TaskConfig(
                train=self.train,
                validation=self.validation,
                test=self.test,
                validation_split=self.validation_split,
                columns=self.columns,
                template=self.template,
                labels=self.labels,
                max_train_samples=self.max_train_samples,
                max_eval_samples=self.max_eval_samples,
            )
        ]


class EvalConfig(_Strict):
    metric: Metric = "auto"
    """Default metric of every task (a task's own `metric` wins). auto: the built-in dataset's metric,
    else accuracy when labels are known, otherwise ROUGE-L. Also: exact_match, chrf, bleu,
    syntax_valid, code, pass_at_1."""
    scoring: Scoring = "auto"
    """likelihood: pick the label with the highest log-probability; generate: decoding (greedy by
    default). auto: likelihood for label tasks, generate otherwise."""
    max_new_tokens: int = Field(64, ge=1)
    """Default generation length (a task's `max_new_tokens` wins)."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy decoding; > 0: sampling at this temperature (with top_p)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass when temperature > 0."""
    batch_size: int = Field(16, ge=1)
    before: bool = True
    """Score the base model before training (needed for the base-vs-tuned comparison)."""


class TrainerConfig(_Strict):
    epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides epochs when set."""
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision of matmuls (autocast). auto: bf16 where supported (AMX CPUs, recent GPUs)."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate validation loss every N optimizer steps (and at the end)."""
    save_every: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without a better validation loss."""
    load_best_at_end: bool = True
    """With evaluation on: finish with the weights of the best validation loss."""
    seed: int = 42
    log_every: int = Field(10, ge=1)
    logger: Literal["none", "tensorboard", "mlflow"] = "none"
    threads: int | None = Field(None, ge=1)
    """torch threads; default: the cores this process may use."""
    compile: bool = True
    """torch.compile the fused cross-entropy kernel (large vocabularies only; falls back to eager)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    lean_activations: bool = True
    """Memory-lean autograd for LoRA dropout, RMSNorm and SwiGLU (models/lean.py): save their inputs,
    recompute the rest in the backward. Same results up to rounding; Llama-family layers and peft LoRA only."""
    max_forgetting: float | None = Field(None, gt=0)
    """Largest drop allowed on any `retain:` task, in its metric's points (0-100; the probe in NLL
    nats x 100). Checked at every evaluation (needs eval_every): a breach stops training and the run
    rolls back to the best evaluated weights that kept every retained task within it."""
    select: Literal["val_loss", "retained"] = "val_loss"
    """Which evaluated weights end the run (load_best_at_end). val_loss: the lowest validation loss;
    retained: the lowest validation loss among evaluations where every retained task is within
    max_forgetting (the best new-task score subject to retention)."""

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError("trainer.early_stopping_patience needs trainer.eval_every (how often to evaluate)")
        return self


class OutputConfig(_Strict):
    dir: str = "runs"
    """Parent folder of run directories."""
    name: str | None = None
    """Run name; the run directory is <dir>/<name>-<timestamp>. Default: the config file's stem."""
    save_model: bool = True
