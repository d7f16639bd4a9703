"""Config sections: model, adapter, eval, trainer, output (data: config/data.py)."""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # the docstring under each field is its documentation (field.description, `retune keys`)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(_Strict):
    """The base model: which, what it predicts, and its precision."""

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
    """Run the Python code a hub model ships with (its own architecture). Only for models you trust."""


# Adapter kinds with first-class options; any other peft method is reached by its peft name
# (e.g. "loha", "lokr", "adalora", "boft") with its arguments under `options`.
AdapterType = str
BUILTIN_ADAPTERS = ("full", "lora", "qlora", "dora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning")
PROMPT_LEARNING = ("prefix_tuning", "prompt_tuning", "p_tuning")  # peft methods that prepend virtual tokens


@functools.cache
def peft_methods() -> tuple[str, ...]:
    """peft's registered method names, lowercased: the same table models/load.py builds them from."""
    bnb = logging.getLogger("bitsandbytes")  # peft imports it, and it logs the optional CPU kernels it lacks
    level = bnb.level
    bnb.setLevel(logging.ERROR)
    try:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    except ImportError:
        return ()
    finally:
        bnb.setLevel(level)
    return tuple(sorted(str(getattr(k, "value", k)).lower() for k in PEFT_TYPE_TO_CONFIG_MAPPING))


class AdapterConfig(_Strict):
    """What is trained: the whole model, or an adapter on the frozen (optionally quantised) base."""

    type: AdapterType = "lora"
    """full | lora | qlora | dora | ia3 | prefix_tuning | prompt_tuning | any other peft method name."""
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """LoRA dropout on the adapter's input."""
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "v_proj"]
    """Module names to adapt, or "all-linear" for every linear layer but the output head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """LoRA: which biases train too. none; all: every bias of the model; lora_only: those of adapted layers."""
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

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        v = v.strip().lower()
        if v in BUILTIN_ADAPTERS or v in peft_methods():  # peft (torch) is imported only for other names
            return v
        hint = difflib.get_close_matches(v, BUILTIN_ADAPTERS + peft_methods(), n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else "check the spelling"
        others = ", ".join(m for m in peft_methods() if m not in BUILTIN_ADAPTERS)
        raise ValueError(
            f"adapter.type '{v}' is not an adapter type ({fix}); use one of {', '.join(BUILTIN_ADAPTERS)}"
            + (f", or another peft method: {others}" if others else "")
        )

    @model_validator(mode="after")
    def _check(self) -> AdapterConfig:
        if self.type == "qlora" and self.quantization == "none":
            self.__dict__["quantization"] = "nf4"
        if self.type == "full" and self.quantization != "none":
            raise ValueError(
                "adapter.type=full cannot train a quantised base; use adapter.type=lora (or qlora) or set adapter.quantization=none"
            )
        return self


Metric = Literal["auto", "accuracy", "exact_match", "rouge_l", "chrf", "bleu", "syntax_valid", "code", "pass_at_1"]
Scoring = Literal["auto", "likelihood", "generate", "cloze"]


class EvalConfig(_Strict):
    """How tasks are scored, before and after training (task-level keys win)."""

    metric: Metric = "auto"
    """Default metric of every task (a task's own `metric` wins). auto: the built-in dataset's metric,
    else accuracy when labels are known, otherwise ROUGE-L. Also: exact_match, chrf, bleu,
    syntax_valid, code, pass_at_1."""
    scoring: Scoring = "auto"
    """likelihood: pick the label with the highest log-probability; cloze: the option (a task's
    `choices` columns) with the highest log-probability per character; generate: decoding (greedy by
    default). auto: cloze for tasks with choices, likelihood for label tasks, generate otherwise."""
    max_new_tokens: int = Field(64, ge=1)
    """Default generation length (a task's `max_new_tokens` wins)."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy decoding; > 0: sampling at this temperature (with top_p)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass when temperature > 0."""
    batch_size: int = Field(16, ge=1)
    """Examples per forward pass when scoring tasks (label likelihoods, generation, their validation
    loss): memory and speed, not the scores."""
    likelihood_fp32: bool = True
    """Labels ranked as with fp32 weights and no autocast, whatever the training precision: the same
    predictions on every CPU / GPU kind (bf16 logits tie or nearly tie on many prompts, and each kernel
    rounds them its own way). Every prompt is scored in the training precision with an fp32 head first;
    those whose best two labels are within 0.25 nats are scored again in fp32. false: the training
    precision only (faster, but kernel-dependent)."""
    before: bool = True
    """Score the base model before training (needed for the base-vs-tuned comparison)."""
    base_cache: bool = True
    """Reuse the base model's scores from an earlier run with the same base model, data, prompts,
    scoring settings, retune code and kernels (a search's trials, a re-run), kept under the cache
    directory (RETUNE_CACHE) in base-scores/. false: score the base model again."""


class TrainerConfig(_Strict):
    """The optimisation: length, batch, learning rate, evaluation and checkpoints."""

    epochs: float = Field(1, gt=0)
    """Passes over the training data (an epoch of the mix with several tasks); fractions are allowed
    (0.5: half an epoch). Ignored when max_steps is set."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides epochs when set."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch (one forward and backward). An optimizer step takes a global batch of
    batch_size x grad_accum examples; with several processes (--nproc N) that global batch is split
    between them, each running micro-batches of at most batch_size, so the update is the same for
    any N (docs/distributed.md). Lower it to save memory; raise grad_accum to keep the global batch."""
    grad_accum: int = Field(1, ge=1)
    """Gradient accumulation: the global batch per optimizer step is batch_size x grad_accum examples,
    whatever the process count. 8 x 1 and 1 x 8 give the same update (the loss is normalised by the
    global batch's labelled tokens)."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate of AdamW (after warm-up)."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up. linear / cosine: decay to 0 at the last step; constant:
    no warm-up, no decay; constant_with_warmup: warm-up, then constant."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Share of the optimizer steps spent ramping the learning rate up from 0."""
    warmup_steps: int | None = Field(None, ge=0)
    """Warm-up length in optimizer steps; overrides warmup_ratio when set."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay on weight matrices (never on biases and norm weights)."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient's global L2 norm to this before each step; null: no clipping."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision of matmuls (autocast). auto: bf16 where supported (AMX CPUs, recent GPUs)."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate validation loss every N optimizer steps (and at the end)."""
    save_every: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the latest checkpoints stay in the run's checkpoints/ (older ones are deleted)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without a better validation loss."""
    load_best_at_end: bool = True
    """With evaluation on: finish with the weights of the best validation loss."""
    seed: int = 42
    """Seeds weight initialisation, dropout, the batch order and each epoch's draw of the task mix."""
    log_every: int = Field(10, ge=1)
    """Write a training row (loss, learning rate, tokens/s, retention penalties) to metrics.jsonl every
    N optimizer steps (and at step 1)."""
    logger: Literal["none", "tensorboard", "mlflow"] = "none"
    """Also send the metrics to TensorBoard (event files in the run directory) or MLflow (needs the
    mlflow package; its tracking URI). metrics.jsonl is written either way."""
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
    forgetting_test: Literal["point", "significant"] = "point"
    """How max_forgetting (and select: retained) judges a retained task. point: its measured drop is
    over max_forgetting; significant: the whole paired 95% interval of the drop is (the loss is over the
    threshold beyond sampling noise; max_forgetting may then be 0.001 for "no significant loss")."""
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
    """Where the run directory goes and what it holds."""

    dir: str = "runs"
    """Parent folder of run directories."""
    name: str | None = None
    """Run name; the run directory is <dir>/<name>-<timestamp>. Default: the config file's stem."""
    save_model: bool = True
    """Save the trained adapter/ (or model/ for full fine-tuning) and tokenizer/ in the run directory;
    false: only the scores, metrics and checkpoints."""
