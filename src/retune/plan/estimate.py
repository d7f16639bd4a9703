"""The estimate: a run's peak memory in parts, from shapes and the dtype rules of retune's training path.

The model is built on the meta device (shapes, no storage) to count parameters; every part is then
computed from the config's shapes, the batch shapes the loop will see, and the dtype rules of
retune's training path (models/load.py, models/loss.py, train/loop.py):

- full fine-tuning: fp32 master weights, fp32 gradients, fused AdamW (fp32 exp_avg + exp_avg_sq),
  matmuls under bf16 autocast, which caches a bf16 copy of every weight for the whole forward;
- LoRA / other adapters: frozen base in bf16 (fp32 without fast bf16), adapters fp32;
- QLoRA: NF4 block linears (0.5 byte + double-quantised absmax); every other weight stays bf16
  under bf16 autocast (peft's k-bit preparation, which casts them to fp32, runs only without it);
- lean activations (models/lean.py, Llama-family models): norms, SwiGLU and LoRA dropout save
  their inputs only, attention saves bf16 probabilities; without them (or other architectures),
  eager attention saves fp32 and bf16 (B, heads, T, T) probabilities of every layer; SDPA neither;
- loss: only labelled positions reach the head, CE_CHUNK rows of logits at a time.

The peak is the largest over the run's phases (plan/phases.py: loading, each scoring pass, training,
saving); training holds weights + optimizer states + max(end of forward: saved activations + loss buffers, optimizer
step: gradients). The measured constants are RUNTIME_MB and COMPILE_MB; per-layer activation
coefficients are counts of the tensors autograd saves (checked with saved_tensors_hooks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from retune import allocator
from retune.config import RetuneConfig
from retune.plan.phases import Resident, run_phases, stage_types
from retune.plan.scoring import Job, retained_jobs, task_jobs
from retune.plan.shapes import Batch, Shape, batch_shape, model_shape, prepared

if TYPE_CHECKING:
    from retune.session.prepare import Prepared

MB = 2**20
# RSS of a `retune train` process before any weights: python + torch + transformers + peft +
# accelerate imports (253 MB), tokenizer, encoded data and the retain probe (~480 MB in all).
# Measured by benchmarks/plan_validate.py (its per-phase peaks: the "data" phase, and the RSS after
# scoring minus the resident bf16 weights), on a 2-CPU x86 box with torch 2.13 CPU.
RUNTIME_MB = 480.0
# torch.compile (inductor) of the fused cross-entropy kernel: not separable from allocator noise.
# The same SmolLM2 LoRA run measured 4895 MB compiled and 5740 MB with trainer.compile=false, so
# peak RSS varies by ~15% between near-identical runs; its cost sits inside ALLOC_OVERHEAD.
COMPILE_MB = 0.0
# Peak RSS over the bytes autograd saves, in training: backward temporaries and glibc keeping freed
# mid-size blocks. Fitted on the three SmolLM2 runs of benchmarks/plan_validate.py (full 1.40,
# LoRA 1.26, QLoRA 1.40: train-phase peak minus the RSS before training, minus optimizer states and
# gradients, over the predicted saved bytes); the ~350M Llama runs are the out-of-sample check.
ALLOC_OVERHEAD = 1.35
# The same ratio for adapter runs on the lean layers (models/lean.py): they save half the bytes but
# keep the same backward temporaries and allocator slack, so the ratio is higher. Fitted on
# smol-lora-b8 (2.02) and smol-qlora-b8 (1.83) of benchmarks/plan_validate.py at commit 7d91df2;
# out of sample: 350M LoRA 2.06, 350M QLoRA 1.94, t512 1.93, no-compile 1.94, quickstart 2.29.
# Full fine-tuning on the lean layers measured 1.37 (SmolLM2) and 1.43 (350M): ALLOC_OVERHEAD.
ALLOC_OVERHEAD_LEAN_ADAPTER = 1.93
# The same ratio on tcmalloc, the malloc `retune train` runs on where it is installed (allocator.py):
# it reuses freed blocks by size class, so the training peak is the live tensors. Fitted on the
# three SmolLM2 rows of benchmarks/plan_validate.py at commit 24e7277 (full 0.96, LoRA 1.06, QLoRA
# 0.95; mean 0.99); out of sample: 350M LoRA 1.05, QLoRA 0.88, full 0.64 (its loading residue is
# smaller than glibc's, LOAD_RESIDENT), t512 1.07, no-compile 1.04, quickstart 1.16, ckpt 0.95.
# Short fixed-shape runs: a long run over varying lengths still grows (benchmarks/results/plan.md).
ALLOC_OVERHEAD_TCMALLOC = 1.0
# What stays resident from loading, in units of the checkpoint's size, measured as the RSS after
# loading and scoring minus runtime and weights in the same SmolLM2 runs: full fine-tuning keeps
# the mapped bf16 checkpoint besides the fp32 copy (1.5), a bf16 base is the mapping itself (0.1),
# bitsandbytes quantisation leaves temporaries that models/load.py hands back (malloc_trim): 0.6.
# A frozen base converted on loading (all-MiniLM-L6-v2's fp32 checkpoint as bf16) keeps the whole
# file mapped besides its bf16 copy: 1.0 (classify-minilm: 134 MB above the data phase for 91 MB of
# checkpoint and 45 MB of weights).
LOAD_RESIDENT = {"full": 1.5, "lora": 0.1, "qlora": 0.6}
CE_CHUNK = 256  # models/loss.py CHUNK: rows of logits alive at once
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks


@dataclass
class Rules:
    """Dtype and kernel rules of a training path (defaults: retune on this machine)."""

    frozen_bytes: int = 2  # frozen base weights (bf16; 4 without fast bf16)
    act_bytes: int = 2  # activations of the matmuls (bf16 autocast; 4 in fp32)
    autocast: bool = True  # fp32 masters under bf16 autocast (the weight-cast cache exists)
    eager: bool = True  # attention probabilities saved (eager); False: SDPA / flash
    chunked_ce: bool = True  # retune's LinearCrossEntropy; False: full (B, T, V) fp32 logits (HF loss)
    runtime_mb: float = RUNTIME_MB
    compile_mb: float = COMPILE_MB
    alloc_overhead: float | None = None  # None: by malloc and path (overhead()); 1.0: live tensors only (a GPU's peak)
    malloc: str = "system"  # the allocator `retune train` runs on: system (glibc) | tcmalloc | jemalloc
    load_resident: bool = True  # count what loading leaves resident (CPU RSS)
    compiled_ce: bool = True  # trainer.compile: the loss kernel fused (else eager fp32 temporaries)
    lean: bool = False  # trainer.lean_activations (models/lean.py), where the model's layers are known

    @classmethod
    def for_config(cls, cfg: RetuneConfig) -> Rules:
        from retune.models.load import bf16_fast

        fast = cfg.trainer.precision == "bf16" or (cfg.trainer.precision == "auto" and bf16_fast())
        frozen = 4 if cfg.model.dtype == "fp32" or (cfg.model.dtype == "auto" and not bf16_fast()) else 2
        compile_mb = COMPILE_MB if cfg.trainer.compile else 0.0
        rules = cls(frozen, 2 if fast else 4, fast, cfg.model.attention != "sdpa", True, RUNTIME_MB, compile_mb)
        rules.compiled_ce = cfg.trainer.compile
        rules.lean = cfg.trainer.lean_activations
        rules.malloc = allocator.wanted()[0]
        return rules

    def overhead(self, method: str, lean_layers: bool) -> float:
        """Peak RSS over the bytes autograd saves, for this malloc and path (the constants above)."""
        if self.alloc_overhead is not None:
            return self.alloc_overhead
        if self.malloc == "tcmalloc":
            return ALLOC_OVERHEAD_TCMALLOC
        # glibc; jemalloc was not calibrated: glibc's larger slack is the safe side
        return ALLOC_OVERHEAD_LEAN_ADAPTER if method != "full" and lean_layers else ALLOC_OVERHEAD


@dataclass
class Plan:
    parts: dict[str, float]  # MB
    peak_mb: float
    phase: str  # the phase that sets the peak (plan/phases.py: load, base_eval, ..., train, ..., save)
    phases: dict[str, float]  # MB at the peak of each phase
    batch: dict[str, Any]
    notes: list[str]
    scoring: list[dict[str, Any]] = field(default_factory=list)  # the scoring passes counted (plan/scoring.py)
    budget_mb: float | None = None
    fits: bool | None = None
    suggestion: str | None = None
    suggested_peak_mb: float | None = None

    def with_phases(self, phases: dict[str, float]) -> Plan:
        """This plan over other phases (MB each), with the peak and the phase that sets it."""
        phase = max(phases, key=lambda name: phases[name])
        return replace(self, phases=phases, phase=phase, peak_mb=phases[phase])

    def evaluation_only(self) -> Plan:
        """What `retune eval CONFIG` runs: loading and the base model's scoring, no training."""
        return self.with_phases({k: v for k, v in self.phases.items() if k in ("load", "base_eval", "retain_base")})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parts"] = {k: round(v, 1) for k, v in self.parts.items()}
        d["phases"] = {k: round(v, 1) for k, v in self.phases.items()}
        d["peak_mb"] = round(self.peak_mb, 1)
        return d


def layer_activation_bytes(
    s: Shape, method: str, rules: Rules, tokens: int, seq: int, lora_dropout: bool = True, dropout: bool = False
) -> float:
    """Bytes autograd saves in one decoder layer for `tokens` tokens of length-`seq` rows.

    Counts, per token, of the saved tensors (h hidden, A = heads x head_dim, K = kv heads x head_dim,
    i intermediate); checked against torch.autograd.graph.saved_tensors_hooks on SmolLM2-135M
    (B in {2, 4}, T in {64, 128}): full 31.5k vs 32.0k, LoRA all-linear 37.6k vs 37.4k, QLoRA 56.4k
    vs 55.3k bytes per token per layer, plus 6 x heads x T for eager attention in all three.
    """
    h, a, k, i = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate
    mlp = 1.0 if s.gated else 0.5  # two-matrix MLPs save half the intermediate tensors
    if lean_applies(s, rules):
        return tokens * lean_layer_bytes(s, method, seq, lora_dropout, rules.eager)
    if not rules.autocast or rules.act_bytes == 4:
        # everything fp32 (the seed's GPU runs). Frozen linears save no input (no weight gradient).
        full_ft = method == "full"
        mlp_t = (3 if s.gated else 1) * i  # gated: gate out, activation out, up out; else the activation input
        per_tok: float = 4 * (2 * h + 3 * a + mlp_t)  # norm inputs, q/k/v for the attention matmuls, MLP tensors
        if full_ft:
            per_tok += 4 * (2 * h + 2 * h + a + i)  # normalised values, linear inputs (norm outputs, context, MLP product)
        if dropout:  # model dropout: masks + outputs after attention, after the MLP, inside the MLP
            per_tok += 5 * (2 * h + i)
        if not full_ft:
            per_tok += sum((5 if lora_dropout else 4) * fan_in for fan_in in s.adapted_in.values())
        probs = 4 + (5 if dropout else 0)
    elif method == "full":  # fp32 residual stream, bf16 casts of every matmul input
        per_tok = 20 * h + 12 * a + 4 * k + 8 * i * mlp
        probs = 6  # fp32 softmax output + its bf16 cast
    else:
        # without adapters: norm tensors, q/k/v/rotary/attention inputs, MLP tensors (QLoRA as LoRA:
        # under bf16 autocast its residual stream stays bf16)
        per_tok = 12 * h + 10 * a + 4 * k + 6 * i * mlp
        # each adapted linear saves its dropout mask (1 byte) and dropped input (2)
        per_in = 3 if lora_dropout else 2
        for name, fan_in in s.adapted_in.items():
            if name in ("o_proj", "down_proj", "dense_4h_to_h", "wo", "o", "dense", "c_proj"):
                per_in_here = 3 if name in ("o_proj", "o", "dense") else per_in  # attention output is bf16
            else:
                per_in_here = per_in
            per_tok += per_in_here * fan_in
        probs = 6
    attn = probs * s.heads * seq if rules.eager else 0
    return tokens * (per_tok + attn)


def lean_applies(s: Shape, rules: Rules) -> bool:
    """Whether models/lean.py replaces this model's layers in this training path."""
    from retune.models.lean import ATTENTION_MODELS  # the Llama family

    return rules.lean and rules.autocast and rules.act_bytes == 2 and s.model_type in ATTENTION_MODELS


def lean_layer_bytes(s: Shape, method: str, seq: int, lora_dropout: bool, eager: bool) -> float:
    """Bytes saved per token in one Llama-family layer under models/lean.py (bf16 autocast).

    LoRA / QLoRA: both norm inputs (bf16), q (a reshaped copy), k and v for attention, gate and up
    for SwiGLU; each group of adapters that reads one input keeps that input once (q/k/v: the
    attention norm's output; gate/up: the MLP norm's; o: the attention output; down: the SwiGLU
    product) plus a 1-byte dropout mask per adapted linear. Full fine-tuning: fp32 norm inputs and a
    bf16 copy of every linear's input (autocast casts it per linear). Attention saves no
    probabilities (lean attention recomputes them; SDPA keeps its output). Checked with
    saved_tensors_hooks on SmolLM2-135M, batch 8 x 256: LoRA 1,303 MB measured vs 1,283 predicted."""
    h, a, k, i = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate
    if method == "full":
        per_tok = 8 * h + 10 * h + 2 * a + (2 * a + 4 * k) + 4 * i + 2 * i
    else:
        names = s.adapted_in
        per_tok = 4 * h + (2 * a + 4 * k) + 4 * i
        per_tok += 2 * h if names.keys() & {"q_proj", "k_proj", "v_proj"} else 0
        per_tok += 2 * h if names.keys() & {"gate_proj", "up_proj"} else 0
        per_tok += 2 * a if "o_proj" in names else 0
        per_tok += 2 * i if "down_proj" in names else 0
        per_tok += sum(names.values()) if lora_dropout else 0
    return per_tok + (0 if eager else 2 * a)


def _weights(s: Shape, r: Rules, method: str, int8: bool) -> tuple[float, int]:
    """(bytes of the model's weights as trained, trainable parameters)."""
    P = s.params
    if method == "full":
        return (4 * P if r.autocast or r.act_bytes == 4 else 2 * P), P
    if method == "qlora" or int8:
        q = NF4_BYTES if method == "qlora" else 1.0 + 4 / 64  # int8 codes + row scales (approximate)
        rest = r.frozen_bytes if r.autocast else 4  # without bf16 autocast, k-bit preparation casts the rest to fp32
        return q * s.quantisable + rest * (P - s.adapter - s.quantisable), s.adapter
    return r.frozen_bytes * (P - s.adapter), s.adapter


def _activations(cfg: RetuneConfig, s: Shape, b: Batch, r: Rules, method: str) -> float:
    """Every layer's saved tensors (or, with checkpointing, each layer's input plus one layer
    recomputed in the backward), the final norm, the encoder for seq2seq."""
    h = s.hidden
    tokens = b.size * b.seq_len
    per_layer = layer_activation_bytes(s, method, r, tokens, b.seq_len, cfg.adapter.dropout > 0, s.dropout)
    resid = (4 if method in ("full", "qlora") or not r.autocast else 2) * h
    enc = 0.0
    if s.enc_layers:
        enc_tokens = b.size * b.enc_len
        enc_layer = layer_activation_bytes(s, method, r, enc_tokens, b.enc_len, cfg.adapter.dropout > 0, s.dropout)
        enc = (s.enc_layers * resid * enc_tokens + enc_layer) if cfg.trainer.gradient_checkpointing else s.enc_layers * enc_layer
        per_layer *= 1.5  # cross-attention: a second attention block per decoder layer
        # cross-attention probabilities (fp32 + dropout) and the encoder keys/values it projects
        per_layer += 9 * b.size * b.seq_len * s.heads * b.enc_len + 8 * s.heads * s.head_dim * enc_tokens
    if cfg.trainer.gradient_checkpointing:
        act = s.layers * resid * tokens + per_layer
    else:
        act = s.layers * per_layer
    return act + enc + 8 * h * tokens  # final norm


def _logits(s: Shape, b: Batch, r: Rules, method: str) -> float:
    """The loss: logits of one chunk of labelled rows, dh of every labelled row, and for a trainable
    head its fp32 gradient plus a bf16 copy of an fp32 head."""
    V, h = s.vocab, s.hidden
    if not r.chunked_ce:  # HF loss: fp32 logits of every position, their softmax and gradient
        return 3 * 4 * b.size * b.seq_len * V
    rows = min(b.labelled, CE_CHUNK)
    head_trainable = method == "full"
    head_fp32 = method == "full" or (method == "qlora" and not r.autocast) or r.frozen_bytes == 4
    chunk = rows * V * (r.act_bytes + 2 if r.compiled_ce and V >= 8192 else 24)  # compiled: logits + gradient; eager: ~6 fp32 temporaries
    logits = chunk + b.labelled * h * r.act_bytes + (4 * V * h if head_trainable else 0)
    return logits + (2 * V * h if head_fp32 and r.autocast else 0)


def _retention(cfg: RetuneConfig, method: str, trainable: int, weights: float, notes: list[str]) -> tuple[float, float]:
    """(bytes the retention methods keep, bytes of a distillation teacher)."""
    retention, teacher = 0.0, 0.0
    per_method = {"ewc": 2, "l2sp": 1, "si": 6}  # fp32 copies of the trainable parameters (retention/*.py)
    for m in cfg.retention:
        if m.method in per_method:
            retention += per_method[m.method] * 4 * trainable
        elif m.method == "distill" and method == "full":
            teacher = weights  # a frozen copy of the model; under adapters the base itself (adapters off)
    return retention, teacher


# fp32 (positions, vocab) tensors alive at once in a distillation term (retention/distill.py kl_sum):
# the student's logits and log-softmax, the teacher's logits and log-softmax, its exp, the difference
KL_TENSORS = 6


def _distill(cfg: RetuneConfig, s: Shape, b: Batch, r: Rules, method: str, retained: list[Job]) -> float:
    """What a distillation term adds to a training step (retention/distill.py): the student's second
    forward with gradients, over a retained micro-batch (`prompts: [retain]`: distill.batch_size rows as
    long as the longest retained example) and over the task's micro-batch (`new`), alive with the task's
    own until the backward; each with KL_TENSORS fp32 logits of every position (an upper bound: `retain`
    counts only response positions); and a full fine-tuning teacher's bf16 weight casts under autocast."""
    extra = 0.0
    longest = max((j.tokens for j in retained if j.mode == "nll" and j.name != "general-text probe"), default=b.seq_len)
    for m in cfg.retention:
        if m.method != "distill" or not m.weight:
            continue
        batches = [Batch(m.batch_size, min(longest, cfg.data.max_length), m.batch_size)] if "retain" in m.prompts else []
        batches += [b] if "new" in m.prompts else []
        for d in batches:
            extra += _activations(cfg, s, d, r, method) + KL_TENSORS * d.size * d.seq_len * s.vocab * 4
        if batches and method == "full" and r.autocast:
            extra += 2 * s.quantisable
    return extra


def _malloc_notes(r: Rules, b: Batch) -> list[str]:
    notes = []
    if r.malloc == "system" and r.alloc_overhead is None:
        notes.append("malloc: the system's (glibc); with tcmalloc (apt-get install libtcmalloc-minimal4) the peak is lower")
    elif r.malloc == "jemalloc" and r.alloc_overhead is None:
        notes.append("malloc: jemalloc, not calibrated: glibc's allocator slack assumed (an upper bound)")
    if b.source == "assumed":
        notes.append(f"data not readable here: assumed every row is {b.seq_len} tokens")
    return notes


def estimate(
    cfg: RetuneConfig,
    shape: Shape | None = None,
    batch: Batch | None = None,
    rules: Rules | None = None,
    jobs: tuple[list[Job], list[Job]] | None = None,
) -> Plan:
    """The predicted peak memory of `retune train cfg`, in parts and by phase. `jobs`: the (task,
    retained) scoring passes (plan/scoring.py); read from the data with the batch when neither is given."""
    s = shape or model_shape(cfg)
    if batch is None:
        b, jobs = read_data(cfg, jobs)
    else:
        b = batch
    r = rules or Rules.for_config(cfg)
    method = "full" if cfg.adapter.type == "full" else ("qlora" if cfg.adapter.quantization in ("nf4", "fp4") else "lora")
    notes: list[str] = []
    P, V = s.params, s.vocab
    weights, trainable = _weights(s, r, method, cfg.adapter.quantization == "int8")
    adapter = 4 * s.adapter if method != "full" else 0.0
    grads = 4 * trainable
    optimizer = 8 * trainable
    act = _activations(cfg, s, b, r, method)
    logits = _logits(s, b, r, method)
    # autocast keeps a bf16 copy of each fp32 weight it casts, until the backward frees it
    cast_cache = 2 * s.quantisable if method == "full" and r.autocast else 0.0
    retention, teacher = _retention(cfg, method, trainable, weights, notes)
    if method == "full" and any(getattr(o, "type", "") == "grpo" and o.beta for o in stage_types(cfg)):
        teacher += weights  # grpo's KL reference: a frozen copy (under adapters: the base, adapters off)

    compile_mb = r.compile_mb if V >= 8192 and r.chunked_ce else 0.0
    ckpt = s.ckpt_bytes * (P - s.adapter)
    resident = LOAD_RESIDENT["full" if method == "full" else ("qlora" if method == "qlora" else "lora")]
    if method == "lora" and s.ckpt_bytes != r.frozen_bytes:
        resident = 1.0  # converted on loading (an fp32 checkpoint into bf16): the read file's pages stay mapped
    loading = resident * ckpt if r.load_resident else 0.0
    fixed = r.runtime_mb * MB + loading + weights + adapter + retention + teacher
    distill = _distill(cfg, s, b, r, method, jobs[1] if jobs else [])
    saved = act + logits + cast_cache + distill
    slack = (r.overhead(method, lean_applies(s, r)) - 1) * saved
    train = fixed + compile_mb * MB + optimizer + max(saved + slack, grads)
    # loading: transformers reads the checkpoint through mmap; a dtype conversion holds both copies
    load = r.runtime_mb * MB + weights + max(loading, ckpt if method != "lora" else 0)
    if jobs is None:  # no data read: the validation loss at eval batch and the training length
        jobs = ([Job("validation loss", "nll", cfg.eval.batch_size, b.seq_len)], [])
    low = 0 if method == "full" or r.frozen_bytes == 4 else P - s.adapter - (s.quantisable if method == "qlora" else 0)
    res = Resident(fixed, optimizer, train, load, low, r.load_resident)
    phases = run_phases(cfg, s, res, jobs[0], jobs[1], r.eager, method, _rollout(cfg, b), b.shapes)
    phase = max(phases, key=lambda name: phases[name])
    parts = {
        "runtime": r.runtime_mb + compile_mb,
        "loading": loading / MB,
        "weights": weights / MB,
        "adapter": adapter / MB,
        "gradients": grads / MB,
        "optimizer": optimizer / MB,
        "activations": (act + cast_cache) / MB,
        "distillation": distill / MB,
        "logits": logits / MB,
        "allocator": slack / MB if saved + slack > grads else 0.0,
        "retention": retention / MB,
        "teacher": teacher / MB,
    }
    notes += _malloc_notes(r, b)
    shape_d = {"batch_size": b.size, "seq_len": b.seq_len, "labelled_rows": b.labelled, "source": b.source, "shapes": b.shapes}
    plan = Plan(parts, phases[phase], phase, phases, shape_d, notes)
    plan.scoring = [j.to_dict() for j in jobs[0] + jobs[1]]
    return plan


def _rollout(cfg: RetuneConfig, b: Batch) -> Job | None:
    """grpo's sampling at each step: its answers (the training rows) generated 16 at a time
    (objectives/grpo.py), the prompt being the row less the answer."""
    grpo = next((o for o in stage_types(cfg) if getattr(o, "type", "") == "grpo"), None)
    if grpo is None:
        return None
    new = grpo.max_new_tokens or cfg.eval.max_new_tokens
    return Job("grpo sampling", "generate", min(16, b.size), max(b.seq_len - new, 1), new)


def read_data(cfg: RetuneConfig, jobs: tuple[list[Job], list[Job]] | None = None, prep: Prepared | None = None, rset: Any = None):
    """(largest training micro-batch, (task, retained) scoring passes) from the run's data."""
    prep = prep or prepared(cfg)
    if prep is None:
        return batch_shape(cfg, None), jobs
    return batch_shape(cfg, prep), jobs or (task_jobs(cfg, prep), retained_jobs(cfg, prep, rset))
