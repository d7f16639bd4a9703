"""`retune export RUN --gguf TYPE` as a phase of the plan: `retune plan CONFIG --export TYPE`.

The export is its own process after the run (export/run.py): it merges the adapter into the base in
fp32 (models/merge.py), writes the merged checkpoint to a temporary folder, and converts it. What that
process holds at its peak, measured on the grpo-sentiment example's run (SmolLM2-135M, LoRA, tcmalloc;
benchmarks/results/plan.md, session 6):
- its imports (torch, transformers, gguf): EXPORT_RUNTIME_MB;
- the checkpoint the base is loaded from (its own dtype; a full fine-tune's model/ in fp32) and the
  merged model in fp32, whose blocks the malloc keeps after the merge;
- the merged fp32 checkpoint, mapped while it is converted; the converted tensors take the blocks the
  merge freed. The peak was the same for every type: q8_0 1,609 MB, f16 1,609 MB, q4_k_m 1,613 MB
  (an F32 GGUF written first, then quantised by llama.cpp, which maps it into what the writer freed);
  the merge alone 1,270 MB. This model: 1,577 MB (-2%).
"""

from __future__ import annotations

import importlib.util

from retune.config import RetuneConfig
from retune.config.sections import PROMPT_LEARNING
from retune.errors import UsageError
from retune.plan.estimate import Plan
from retune.plan.shapes import Shape

MB = 2**20
EXPORT_RUNTIME_MB = 294.0  # the export process after its imports (measured; training's runtime is larger)


def export_mb(cfg: RetuneConfig, s: Shape, qtype: str) -> float:
    """MB at the peak of `retune export RUN --gguf qtype` for a run of `cfg` (the same for every type)."""
    from retune.export.gguf_model import NATIVE_TYPES
    from retune.export.quantise import ftype

    if qtype.lower() not in NATIVE_TYPES and importlib.util.find_spec("llama_cpp") is not None:
        ftype(qtype)  # a type llama.cpp does not have: the one-line error `retune export` gives
    if cfg.adapter.type in PROMPT_LEARNING:
        raise UsageError(f"--export: adapter.type={cfg.adapter.type} adds virtual tokens, not weights; it has no merged GGUF to plan")
    weights = s.params - (s.adapter if cfg.adapter.type != "full" else 0)
    checkpoint = (4 if cfg.adapter.type == "full" else s.ckpt_bytes) * weights
    fp32 = 4 * weights
    return (EXPORT_RUNTIME_MB * MB + checkpoint + 2 * fp32) / MB


def with_export(plan: Plan, cfg: RetuneConfig, s: Shape, qtype: str) -> Plan:
    """The plan with the export as its last phase (and the peak, if the export sets it)."""
    return plan.with_phases({**plan.phases, "export": export_mb(cfg, s, qtype)})
