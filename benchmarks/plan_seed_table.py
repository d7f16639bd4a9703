"""The seed's memory table (A100 80 GB) predicted from the models' configs alone.

    .venv/bin/python benchmarks/plan_seed_table.py [--json PATH]

The seed (the PEFT README's table) reports GPU peak memory of T0_3B, mT0-xxl and bloomz-7b1 under
full fine-tuning and LoRA. Its runs (PEFT's example scripts of early 2023) trained in fp32 (no mixed
precision: fp32 weights, gradients and Adam states), eager attention, the Hugging Face loss over
fp32 logits, LoRA r=8 on q and v (T5) or query_key_value (BLOOM), dropout 0.1. Assumed shapes:
batch 8; the seq2seq models read 64 source tokens and write 4 target tokens (twitter_complaints
labels); bloomz reads 64 tokens. GPU memory is the PyTorch allocator's, so no CUDA context or
Python runtime is counted. The configs are in benchmarks/plan_models/ (written from the published
shapes; nothing is downloaded): each model is built on the meta device to count its parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoConfig

from retune.config import validate
from retune.plan import Batch, Rules, estimate, shape_from_config

HERE = Path(__file__).resolve().parent
GB = 1e9 / 2**20  # the seed reports decimal GB; the plan works in MiB
A100 = 80.0

# model folder, task, LoRA targets, seed's full-FT GB (None: out of memory), seed's LoRA GB
SEED = [
    ("t0_3b", "seq2seq", ["q", "v"], 47.14, 14.4),
    ("mt0_xxl", "seq2seq", ["q", "v"], None, 56.0),
    ("bloomz_7b1", "causal_lm", ["query_key_value"], None, 32.0),
]
RULES = Rules(
    frozen_bytes=4,
    act_bytes=4,
    autocast=False,
    eager=True,
    chunked_ce=False,
    runtime_mb=0.0,
    compile_mb=0.0,
    alloc_overhead=1.0,
    load_resident=False,
)


def predict(folder: str, task: str, targets: list[str], method: str) -> tuple[float, dict]:
    path = HERE / "plan_models" / folder
    config = AutoConfig.from_pretrained(path)
    tie_head = json.loads((path / "config.json").read_text())["tie_word_embeddings"]
    adapter = {"type": method, "r": 8, "alpha": 32, "dropout": 0.1, "target_modules": targets}
    cfg = validate({"model": {"task": task}, "adapter": adapter, "trainer": {"batch_size": 8}})
    shape = shape_from_config(config, task, cfg.adapter if method != "full" else None, tie_head)
    batch = Batch(8, 4, 8 * 4, 64, "assumed") if task == "seq2seq" else Batch(8, 64, 8 * 64, 0, "assumed")
    plan = estimate(cfg, shape, batch, RULES)
    return plan.phases["train"] / GB, {
        "params": shape.params,
        "trainable": shape.adapter,
        "parts_gb": {k: round(v / GB, 2) for k, v in plan.parts.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'model':12} {'params':>7} {'method':6} {'predicted GB':>12} {'seed GB':>8} {'error':>7}  on an A100 80 GB")
    for folder, task, targets, seed_full, seed_lora in SEED:
        for method, seed in (("full", seed_full), ("lora", seed_lora)):
            gb, info = predict(folder, task, targets, method)
            verdict = "fits" if gb <= A100 else "OOM"
            seed_s = f"{seed:.1f}" if seed is not None else "OOM"
            if seed is not None:
                err = f"{100 * (gb - seed) / seed:+.1f}%"
            else:
                err = "agrees" if verdict == "OOM" else "DISAGREES"
            print(f"{folder:12} {info['params'] / 1e9:6.2f}B {method:6} {gb:9.1f} {verdict:4} {seed_s:>6} {err:>9}")
            rows.append({"model": folder, "method": method, "predicted_gb": round(gb, 2), "seed_gb": seed, "fits_a100": gb <= A100, **info})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
