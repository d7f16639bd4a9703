"""What an estimate needs from a model and its data: sizes and counts from the config on the meta
device (Shape), and the largest micro-batch the run will see (Batch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from retune.config import RetuneConfig
from retune.errors import UsageError

if TYPE_CHECKING:
    from retune.session.prepare import Prepared


@dataclass
class Shape:
    """What the estimate needs from a model: sizes from its config, counts from its meta skeleton."""

    kind: str  # causal_lm | seq2seq | seq_cls
    layers: int  # decoder layers (or the encoder's, for seq_cls)
    enc_layers: int  # seq2seq encoder layers, else 0
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated: bool  # gate/up/down MLP (Llama, T5 v1.1) vs two-matrix MLP (BLOOM, GPT-2)
    params: int  # unique parameters (a tied head counted once)
    quantisable: int  # nn.Linear weights bitsandbytes would quantise (all but the output head)
    head: int  # output-head parameters if untied, else 0
    ckpt_bytes: int = 2  # bytes per weight in the checkpoint (its config's dtype)
    dropout: bool = False  # the model's own dropout is on in training (T5: dropout_rate 0.1)
    adapter: int = 0  # trainable parameters of the configured adapter (0: full fine-tuning)
    adapted_in: dict[str, int] = field(default_factory=dict)  # adapted module suffix -> in_features
    model_type: str = ""  # config.model_type: whether models/lean.py knows its layers


def model_shape(cfg: RetuneConfig, path: str | None = None) -> Shape:
    """Shape of cfg.model.base from its config.json alone: the model is built on the meta device."""
    from transformers import AutoConfig

    from retune.models.resolve import resolve_base

    path = path or resolve_base(cfg.model.base)
    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the config of '{cfg.model.base}': {str(e).splitlines()[0]}") from None
    return shape_from_config(config, cfg.model.task, cfg.adapter if cfg.adapter.type != "full" else None)


def shape_from_config(config: Any, kind: str = "causal_lm", adapter: Any = None, tie_head: bool | None = None) -> Shape:
    """`kind`: the model.task. `tie_head`: whether the output head shares the input embeddings, when the config
    object cannot say (transformers 5 forces tie_word_embeddings=True on mT5 configs whatever config.json says)."""
    import torch
    from accelerate import init_empty_weights

    from retune.models.tasks import task_type

    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    with init_empty_weights():
        model = task_type(kind).from_config(config)
        head = model.get_output_embeddings()
        # from_config on meta leaves tied weights as separate tensors: count each tie once (the
        # output head only when the config ties it)
        named = dict(model.named_parameters())
        head_key = next((n for n, p in named.items() if head is not None and p is head.weight), None)
        # transformers 5 keeps T5's own flag as scale_decoder_outputs (False: v1.1 / mT5, untied head)
        if tie_head is None:
            tie_head = bool(getattr(c, "tie_word_embeddings", False)) and getattr(c, "scale_decoder_outputs", True)
        ties = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
        ties = (
            {t: src for t, src in dict(ties).items() if t in named and src in named and (t != head_key or tie_head)}
            if isinstance(ties, dict)
            else {}
        )
        duplicate = sum(named[t].numel() for t, src in ties.items() if named[t] is not named[src])
        tied = head is None or head_key is None or head_key in ties
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        adapted: dict[str, int] = {}
        trainable = 0
        if adapter is not None:
            from retune.models.load import attach_adapter

            plain = adapter.model_copy(update={"quantization": "none"})  # counts only: no bitsandbytes on meta
            peft_model = attach_adapter(model, plain)
            trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
            trainable -= sum(named[t].numel() for t in ties if named[t].requires_grad and named[t] is not named[ties[t]])
            for name, m in peft_model.named_modules():
                if hasattr(m, "lora_A") and hasattr(m, "in_features") and m.lora_A:
                    adapted[name.rsplit(".", 1)[-1]] = m.in_features
    hidden = c.hidden_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or getattr(c, "d_kv", None) or hidden // heads
    inter = getattr(c, "intermediate_size", None) or getattr(c, "d_ff", None) or getattr(c, "n_inner", None) or 4 * hidden
    gated = "gated" in str(getattr(c, "feed_forward_proj", "")) or getattr(c, "hidden_act", None) == "silu"
    enc = getattr(c, "num_layers", 0) if getattr(c, "is_encoder_decoder", False) else 0
    layers = (getattr(c, "num_decoder_layers", None) or enc) if enc else c.num_hidden_layers
    return Shape(
        kind=kind,
        layers=layers,
        enc_layers=enc,
        hidden=hidden,
        intermediate=inter,
        heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=c.vocab_size,
        gated=bool(gated),
        params=sum(p.numel() for p in model.parameters()) - duplicate,
        quantisable=sum(m.weight.numel() for m in linears),
        head=0 if tied else head.weight.numel(),
        # a config without a dtype predates the field: its checkpoint was saved in fp32
        ckpt_bytes=4 if "32" in str(getattr(c, "dtype", None) or "float32") else 2,
        dropout=any(float(getattr(c, k, 0) or 0) > 0 for k in ("dropout_rate", "hidden_dropout", "attention_dropout", "resid_pdrop")),
        adapter=trainable,
        adapted_in=adapted,
        model_type=str(getattr(c, "model_type", "")),
    )


@dataclass
class Batch:
    """The largest micro-batch the loop will see (activations grow with it)."""

    size: int
    seq_len: int  # padded length (decoder length for seq2seq)
    labelled: int  # rows that reach the output head in that micro-batch
    enc_len: int = 0  # seq2seq encoder length
    source: str = "assumed"  # "data": measured on the tokenised training set
    shapes: int = 1  # distinct micro-batch shapes (rows, lengths) over the run's steps (all stages)


def prepared(cfg: RetuneConfig) -> Prepared | None:
    """The run's data as `retune train` encodes it (no model weights); None without a tokenizer here."""
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base
    from retune.session.prepare import prepare_data

    try:
        tok = load_tokenizer(resolve_base(cfg.model.base), cfg.model)
    except Exception:  # no tokenizer here (hub id offline): the worst case stands, marked "assumed"
        return None
    return prepare_data(cfg, tok=tok)  # bad data is bad input, as in `retune train`


def batch_shape(cfg: RetuneConfig, prep: Prepared | None = None) -> Batch:
    """Find the micro-batch with the most tokens among the optimizer steps the run will take in the
    tokenised training data (`prep`, else read here); without data access, assume full-length rows."""
    t = cfg.trainer
    worst = Batch(t.batch_size, cfg.data.max_length, t.batch_size * cfg.data.max_length if cfg.data.train_on_prompt else t.batch_size * 8)
    prep = prep or prepared(cfg)
    if prep is None:
        return worst
    best: tuple[float, Batch] | None = None
    shapes = 0
    for pool, objective, trainer in _trained(cfg, prep):
        b = _largest(cfg, pool, objective, trainer)
        if b is not None and (best is None or b[0] > best[0]):
            best = b
        shapes += b[1].shapes if b is not None else 0
    return replace(best[1], shapes=max(shapes, 1)) if best else worst


def _trained(cfg: RetuneConfig, prep: Prepared) -> list[tuple[Callable[[int], list], Any, Any]]:
    """What the loop trains on, in turn: (each epoch's examples, their stage type, the trainer settings):
    under `stages:` each stage's task, type and overrides; else the task mix under `objective:`."""
    if cfg.stages:
        return [(_fixed(prep.task_train[i]), prep.objectives[i], stage.trainer_for(cfg.trainer)) for i, stage in enumerate(cfg.stages)]
    trained = prep.trained
    return [(prep.epoch_examples, prep.objectives[trained[0]], cfg.trainer)] if trained else []


def _fixed(examples: list) -> Callable[[int], list]:
    return lambda _epoch: examples  # a stage trains on its own task: the same examples every epoch


def _largest(cfg: RetuneConfig, examples: Callable[[int], list], objective: Any, t: Any) -> tuple[float, Batch] | None:
    """The micro-batch with the most tokens (by rows x length^1.3) among the optimizer steps taken:
    a pair puts its two answers through the forward, a grpo prompt its generations (objective.rows)."""
    from retune.data.batching import batch_indices
    from retune.models.tasks import task_type
    from retune.train.optim import total_steps

    if not examples(0):
        return None
    kind = task_type(cfg.model.task)
    steps = total_steps(t, len(examples(0)))
    best, taken, epoch, seen = None, 0, 0, set()
    while taken < steps and epoch < 3:
        pool = examples(epoch)
        for batch in batch_indices([objective.length(e) for e in pool], t.batch_size * t.grad_accum, t.seed, epoch):
            for s in range(0, len(batch), t.batch_size):
                micro = [row for i in batch[s : s + t.batch_size] for row in objective.rows(pool[i])]
                seq_len, enc_len = kind.batch_lengths(micro)
                seen.add((len(micro), seq_len, enc_len))
                labelled = sum(sum(1 for y in e.labels[1:] if y != -100) for e in micro)
                key = len(micro) * (seq_len + enc_len) ** 1.3
                if best is None or key > best[0]:
                    best = (key, Batch(len(micro), seq_len, labelled, enc_len, "data"))
            taken += 1
            if taken >= steps:
                break
        epoch += 1
    return (best[0], replace(best[1], shapes=len(seen))) if best else None
