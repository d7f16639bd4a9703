"""Every phase of a run, in the order `retune train` takes them, as the bytes each holds at its peak:
load, base_eval (the tasks), retain_base (retained tasks and the probe), reference (a preference
stage's reference log-probabilities: a no-grad pass, no model copy), train, train_eval (retention
scored at each evaluation, with the optimizer alive), tuned_eval, retain_tuned, save.

Scoring phases hold the resident part of the run (runtime, what loading left, the weights, the adapter)
plus their largest scoring pass (plan/scoring.py). Likelihoods in fp32 (eval.likelihood_fp32) cast a
bf16 base to fp32 for the pass: +4 bytes per low-precision weight. On the CPU what that round trip
leaves stays in the process for the rest of the run (SCORING_RESIDUE): the cast back makes new bf16
tensors besides the checkpoint's mapping, and the malloc keeps the freed fp32 blocks; a later fp32
pass reuses them, the training step's tensors (other sizes) do not, and training grows above its live
tensors with every micro-batch shape it meets (train_after_fp32). Measured on the shipped examples
(benchmarks/results/plan.md). A generation pass leaves its blocks too (GENERATION_LEFT): each decoding
step grows the KV cache by one position, so the malloc ends up holding blocks of sizes nothing later
asks for; a later phase adds its own bytes on top, except what fits in an fp32 round trip's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from retune.config import RetuneConfig
from retune.plan.scoring import Job, job_bytes, largest_block
from retune.plan.shapes import Shape

MB = 2**20
# What an fp32 scoring round trip leaves resident, in units of the low-precision weights' fp32 size:
# measured on the quickstart (tcmalloc, 135M bf16 weights: 514 MB in fp32): 583 MB after loading,
# 1,316 MB at base scoring, 1,300-1,310 MB after it, where the resident part is ~780 MB.
SCORING_RESIDUE = 1.0
# The same residue as training sees it, in units of the fp32 size, grows with the distinct micro-batch
# shapes training meets (each leaves per-shape state: oneDNN's primitive cache, the malloc's size-class
# caches; data/batching.py): what the training phase measured above the plan's live tensors, as a
# multiple of the 513 MB fp32 size, was 0.68 for the quickstart (9 shapes), 1.11 preference (7), 2.01
# multitask (17), 2.2 sft-then-dpo (26) and 1.9 stages (28) (tcmalloc, session 7). A least-squares
# line through those five, capped at the largest seen; benchmarks/results/plan.md.
TRAIN_AFTER_FP32 = (0.58, 0.0575, 2.2)  # (at no shape, per shape, cap)


def train_after_fp32(shapes: int) -> float:
    base, per_shape, cap = TRAIN_AFTER_FP32
    return min(base + per_shape * shapes, cap)


# What a generation pass before training leaves resident, in units of the pass's own bytes: measured
# on the grpo-sentiment example's base model (tcmalloc, weights paged in first): rotten-tomatoes'
# answers alone +131 MB, debian-descriptions' summaries after them +211 MB more (alone: +244 MB),
# and the whole run held the sum into training. Where an fp32 likelihood pass came first, generation
# takes the blocks its round trip freed instead (the preference example: +58 MB at retain_base);
# benchmarks/results/plan.md, session 6.
GENERATION_LEFT = 1.0


@dataclass
class Resident:
    """Bytes a run holds across phases (from estimate())."""

    fixed: float  # runtime + loading residue + weights + adapter + retention buffers + teacher
    optimizer: float
    train: float  # the training phase's peak (fixed + optimizer + max(saved activations, gradients))
    load: float
    low_weights: int  # parameters stored in bf16 / fp16 that fp32 scoring casts
    cpu: bool  # RSS view (allocator keeps freed memory) vs a GPU allocator's live bytes


def _pass(s: Shape, job: Job, cfg: RetuneConfig, res: Resident, eager: bool, fan_in: int, carried: float) -> float:
    """One scoring pass beyond the resident part: its temporaries, and the fp32 copy of a likelihood
    pass, which reuses the blocks an earlier fp32 pass left (`carried`)."""
    fp32 = job.mode in ("likelihood", "cloze") and cfg.eval.likelihood_fp32 and res.low_weights > 0
    copy = 4 * res.low_weights if fp32 else 0.0
    return job_bytes(s, job, 4 if fp32 else 2, eager, fan_in) + carried + copy - min(copy, carried)


def run_phases(
    cfg: RetuneConfig,
    s: Shape,
    res: Resident,
    tasks: list[Job],
    retained: list[Job],
    eager: bool,
    method: str,
    rollout: Job | None = None,
    shapes: int = 1,
) -> dict[str, float]:
    """MB at the peak of each phase the run goes through. `rollout`: grpo's sampling at each step;
    `shapes`: the distinct micro-batch shapes training meets."""
    fan_in = max(s.adapted_in.values(), default=0) if method != "full" else 0  # unmerged adapter after attach
    fp32_used = cfg.eval.likelihood_fp32 and res.low_weights > 0 and any(j.mode in ("likelihood", "cloze") for j in tasks + retained)
    residue = SCORING_RESIDUE * 4 * res.low_weights if fp32_used and res.cpu else 0.0

    def scoring(jobs: list[Job], base: float, fan: int, carried: float) -> float:
        return base + max((_pass(s, j, cfg, res, eager, fan, carried) for j in jobs), default=carried)

    def generation_left(jobs: list[Job]) -> float:
        passes = [_pass(s, j, cfg, res, eager, 0, 0.0) for j in jobs if j.mode == "generate"]
        return GENERATION_LEFT * sum(passes) if res.cpu else 0.0

    phases = {"load": res.load}
    gen = 0.0  # what base scoring's generations leave (CPU), in the fp32 residue's freed blocks first
    if cfg.eval.before and tasks:
        phases["base_eval"] = scoring(tasks, res.fixed, 0, 0.0)
        gen = generation_left(tasks)
    after = residue if cfg.eval.before else 0.0
    if retained:
        phases["retain_base"] = scoring(retained, res.fixed + max(gen - after, 0.0), 0, after)
        after = residue
        gen += generation_left(retained)
    left = max(gen - after, 0.0)
    if any(getattr(o, "type", "sft") != "sft" for o in stage_types(cfg)) and tasks:
        ref = Job("reference log-probabilities", "nll", cfg.eval.batch_size, cfg.data.max_length)
        phases["reference"] = scoring([ref], res.fixed, fan_in, after)
    phases["train"] = res.train + after * train_after_fp32(shapes) / SCORING_RESIDUE + left
    if rollout is not None:  # grpo samples before each step; on the CPU the malloc keeps what it held
        sampled = _pass(s, rollout, cfg, res, eager, fan_in, 0.0)
        phases["train"] = phases["train"] + sampled if res.cpu else max(phases["train"], res.fixed + res.optimizer + sampled)

    def after_training(jobs: list[Job], base: float) -> float:
        # the malloc keeps what training freed (RSS stays near its peak on the CPU); a block larger than
        # those pieces (a generation's prefill logits) is new memory on top
        own = scoring(jobs, base, fan_in, residue)
        block = max((largest_block(s, j) for j in jobs), default=0.0)
        return max(own, phases["train"] + block) if res.cpu else own

    if retained and cfg.trainer.eval_every:
        phases["train_eval"] = after_training(retained, res.fixed + res.optimizer)
    phases["tuned_eval"] = after_training(tasks, res.fixed)
    if retained:
        phases["retain_tuned"] = after_training(retained, res.fixed)
    # saving holds the resident part; on the CPU the RSS stays where the last scoring pass left it
    held = [phases[k] for k in ("tuned_eval", "retain_tuned") if k in phases and res.cpu]
    phases["save"] = max([res.fixed + residue, *held])
    return {k: v / MB for k, v in phases.items()}


def stage_types(cfg: RetuneConfig) -> list:
    """The stage type configs a run trains with: each stage (under `stages:`), else `objective:`."""
    return list(cfg.stages) if cfg.stages else [cfg.objective]
