"""Load a base model (full precision, bf16, or quantised by bitsandbytes) and put a peft adapter on it."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from retune import allocator
from retune.config import AdapterConfig, ModelConfig, RetuneConfig
from retune.errors import UsageError
from retune.models.resolve import resolve_base
from retune.rundir import RunDir
from retune.types import Model, Tokenizer

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import BitsAndBytesConfig

# peft methods reachable by name (adapter.type) besides the first-class ones; checked against peft at load.
PEFT_METHODS = {
    "lora",
    "dora",
    "qlora",
    "ia3",
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
    "loha",
    "lokr",
    "adalora",
    "boft",
    "oft",
    "vera",
    "fourierft",
    "hra",
    "ln_tuning",
    "bone",
    "randlora",
}


@functools.cache
def bf16_fast() -> bool:
    """True where bf16 matmuls are fast: AMX / AVX512-BF16 CPUs, or a CUDA GPU that supports bf16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_dtype(precision: str) -> torch.dtype:
    if precision == "bf16" or (precision == "auto" and bf16_fast()):
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, model: ModelConfig | None = None) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=model.revision if model else None, trust_remote_code=bool(model and model.trust_remote_code)
        )
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _quantization(adapter: AdapterConfig) -> BitsAndBytesConfig | None:
    if adapter.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if adapter.quantization == "int8":  # LLM.int8 (Dettmers et al. 2022)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=adapter.quantization,
        bnb_4bit_use_double_quant=adapter.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if adapter.compute_dtype == "bf16" else torch.float32,
    )


def load_base(cfg: RetuneConfig, path: str | None = None, trainable_full: bool = False, labels: list[str] | None = None) -> Model:
    """The base model (causal LM, classifier or seq2seq by model.task). Frozen weights in bf16 where that
    is fast; fp32 when every weight is trained. `labels`: the classes of a seq_cls head (default: the config's)."""
    from retune.models.tasks import task_type

    kind = task_type(cfg.model.task)
    path = path or resolve_base(cfg.model.base)
    if cfg.model.dtype == "fp32" or trainable_full:
        dtype = torch.float32  # full fine-tuning keeps fp32 master weights; autocast gives bf16 matmuls
    elif cfg.model.dtype == "bf16" or bf16_fast():
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    attention = cfg.model.attention
    if attention == "auto":
        attention = "sdpa" if torch.cuda.is_available() else "eager"
    if attention == "sdpa" and not torch.cuda.is_available():
        # transformers repeats grouped key/value heads before SDPA whenever there is a padding mask (CUDA
        # kernels need that); torch's CPU kernels take masked GQA directly: 26.8 vs 32.2 ms per layer
        # (forward + backward, SmolLM2 shapes, batch 8 x 256). This is transformers' own switch for it.
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    extra = kind.load_kwargs(labels, cfg)  # a seq_cls head's classes
    try:
        model = kind.auto_class().from_pretrained(
            path,
            **extra,
            dtype=dtype,
            attn_implementation=attention,
            quantization_config=_quantization(cfg.adapter),
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load model '{cfg.model.base}' from {path}: {first} (corrupt or incomplete checkpoint?)") from None
    if cfg.adapter.quantization != "none":
        detach_from_checkpoint(model)
        allocator.release()  # quantising while loading freed each full-precision weight after use (~650 MB on SmolLM2)
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    contiguous_head_input(model)
    return model


def contiguous_head_input(model: Model) -> None:
    """Give the LM head a contiguous input.

    Generation's prefill computes logits only for the last position: transformers slices the hidden
    states (`hidden[:, -1:, :]`, a strided view). torch's matmul folds a 3-D input into one 2-D matmul
    only if its strides allow a view, or if the weight needs a gradient; a frozen head (any adapter
    run, or scoring) over that slice goes to a batched matmul with the weight expanded and copied once
    per row: 16 x 49,152 x 576 bf16 = 905 MB per prefill on SmolLM2, and half the forward's time
    (measured: a no-grad forward of 16 x 106 tokens through the LoRA model, 1.2 s and +920 MB of RSS
    on tcmalloc; with the copy of a 16 x 576 input, 1.07 s and +82 MB)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear):
        head.register_forward_pre_hook(_contiguous_first)


def _contiguous_first(module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def detach_from_checkpoint(model: Model) -> None:
    """Copy the weights that were not quantised (embeddings, norms) out of the checkpoint's memory map.

    transformers leaves them as views of the mapped safetensors file, which keeps the whole mapping
    alive, and with it every page that quantisation read: 203 MB resident for a 57 MB embedding on
    SmolLM2-135M. Copied, the mapping closes and those pages leave the process."""
    for module in model.modules():
        for param in list(module.parameters(recurse=False)):
            if type(param).__name__ not in ("Params4bit", "Int8Params"):
                param.data = param.data.clone()
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None:
                module._buffers[name] = buf.clone()
    import gc

    gc.collect()  # the mapping is freed with the last storage that viewed it


def disable_adapter_input_cast(model: Model) -> None:
    """peft casts a layer's input to the adapter's (fp32) dtype before the adapter matmuls; under bf16
    autocast that is a wasted round trip (measured ~20% of a LoRA step on CPU): autocast already
    runs those matmuls in bf16 with fp32 weights as masters."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only


def peft_config(adapter: AdapterConfig, task_type: str = "CAUSAL_LM") -> PeftConfig:
    import peft

    kind = adapter.type
    common: dict[str, Any] = {"task_type": task_type, **adapter.options}
    if kind in ("lora", "qlora", "dora"):
        return peft.LoraConfig(
            r=adapter.r,
            lora_alpha=adapter.alpha,  # type: ignore[arg-type]  # peft annotates int; any number scales alpha / r
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
            bias=adapter.bias,
            use_dora=kind == "dora",
            **common,
        )
    if kind == "ia3":
        if "target_modules" in adapter.model_fields_set:  # else peft's per-architecture defaults
            common.setdefault("target_modules", adapter.target_modules)
        return peft.IA3Config(**common)
    if kind in ("prefix_tuning", "prompt_tuning", "p_tuning"):
        cls = {"prefix_tuning": peft.PrefixTuningConfig, "prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig}[
            kind
        ]
        return cls(num_virtual_tokens=adapter.num_virtual_tokens, **common)
    mapping = {t.value: cfg for t, cfg in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING.items()}  # by name: "LORA", ...
    key = kind.upper()
    if key not in mapping:
        raise UsageError(f"adapter.type '{kind}' is not a peft method (known: full, {', '.join(sorted(m.lower() for m in mapping))})")
    if "target_modules" in adapter.model_fields_set:
        common.setdefault("target_modules", adapter.target_modules)
    try:
        return mapping[key](**common)
    except TypeError as e:
        raise UsageError(f"adapter.options for {kind}: {e}") from None


def attach_adapter(model: Model, adapter: AdapterConfig, bf16_autocast: bool = False) -> Model:
    """Wrap the base with a fresh peft adapter; the base stays frozen."""
    import peft

    from retune.models.tasks import task_type_of

    if adapter.quantization != "none" and not bf16_autocast:
        # peft's k-bit preparation casts every non-quantised weight (norms, embeddings) to fp32, for
        # fp16 compute. Under bf16 autocast they stay bf16, as in LoRA: an fp32 residual stream would
        # double the saved activations (QLoRA then peaked above LoRA) and slow every elementwise op.
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        # SEQ_CLS: peft also trains the classification head in full (modules_to_save)
        return peft.get_peft_model(model, peft_config(adapter, task_type_of(model).peft_task_type))
    except ValueError as e:
        raise UsageError(f"adapter: {str(e).splitlines()[0]} (check adapter.target_modules)") from None


def prepare_for_training(model: Model, cfg: RetuneConfig, bf16_autocast: bool) -> Model:
    """Make a loaded base trainable as the config says: all weights, or a fresh adapter."""
    if cfg.adapter.type == "full":
        model.requires_grad_(True)
    else:
        model = attach_adapter(model, cfg.adapter, bf16_autocast)
        if bf16_autocast:
            disable_adapter_input_cast(model)
    if cfg.trainer.lean_activations:
        from retune.models import lean

        setattr(model, "retune_lean", lean.apply(model))  # noqa: B010 (a plain attribute on a Module: what path_report says)
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.adapter.type != "full":
            model.enable_input_require_grads()
    return model


def load_trained(run_dir: Path, cfg: RetuneConfig) -> Model:
    """The tuned model from a run directory: base + adapter/, or model/ for full fine-tuning."""
    import peft

    found = RunDir(run_dir).need_model()
    if found.name == "model":
        return load_base(cfg, str(found))
    try:
        return peft.PeftModel.from_pretrained(load_base(cfg), found)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UsageError(f"{run_dir}/adapter is corrupt or does not match the base model: {str(e).splitlines()[0]}") from None


def count_params(model: Model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def path_report(model: Model) -> str:
    """Which of retune's fast paths a prepared model runs, said once per run: the lean layers that
    apply to its family (models/lean.py) and whether the fused head + loss does (models/loss.py)."""
    from retune.models.loss import hidden_path, unwrap

    family = getattr(getattr(unwrap(model), "config", None), "model_type", "?")
    counts = getattr(model, "retune_lean", None)
    # the family's own layers; LoRA's dropout folds into lora_A in every family and is not a family matter
    parts = [f"{k} x{v}" for k, v in (counts or {}).items() if v and k != "lora_dropout"]
    lean = f"lean layers {', '.join(parts)}" if parts else "stock layers (no lean layer applies)" if counts is not None else "stock layers"
    head = "fused head + loss" if hidden_path(model) is not None else "stock head + loss (the model's own forward)"
    return f"{family}: {lean}; {head}"
