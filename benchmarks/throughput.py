"""Training throughput and memory: retune vs a plain HF Trainer + PEFT run, in one run, same model,
same token sequences, same batch size.

    python benchmarks/throughput.py                      # SmolLM2-135M, batch 8, sequences of 64-256 tokens
    python benchmarks/throughput.py --methods lora --steps 6 --json out.json
    python benchmarks/throughput.py --methods lora --tools retune --variant sdpa=model.attention=sdpa

A --variant NAME=KEY=VALUE[,KEY=VALUE...] adds a retune row "retune[NAME]" trained with those config
overrides (the --set syntax of `retune train`), measured in the same run as the others. The key
`allocator` (tcmalloc | jemalloc | system) is not a config key: it picks the row's malloc, as
RETUNE_ALLOCATOR does for `retune` (retune rows run on what `retune` would choose; the baseline on the
system malloc, as a plain `python script.py` does).

Each (tool, method) trains in its own process (so peak RSS is its own) for --steps optimizer steps;
tokens/s counts non-pad tokens over the steps after --warmup. MFU = model FLOPs per second / the bf16
matrix-product FLOP/s measured at the start of the same run, with model FLOPs per token
= 6 N + 6 L d T (N = parameters used in matrix products, the tied embedding counted once as the
output head; the attention term is PaLM's 12 L d T halved for causal masking; T = mean length).
6N counts a weight-gradient pass that LoRA skips for frozen weights, as MFU conventionally does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retune import allocator

HERE = Path(__file__).resolve().parent


def matmul_tflops(n: int = 2048, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def make_sequences(model_dir: str, n: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """Real text (movie reviews, concatenated) cut into sequences of random length in [min_len, max_len]."""
    from transformers import AutoTokenizer

    from retune.data.builtin import load_builtin

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = " ".join(r["review"] for r in load_builtin("rotten-tomatoes", "train"))
    ids = tok(text, add_special_tokens=False).input_ids
    rng = random.Random(seed)
    out, pos = [], 0
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        out.append(ids[pos : pos + length])
        pos += length
    return out


def model_flops_per_token(model_dir: str, mean_len: float) -> float:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())  # tied embedding counted once (as the head)
    return 6 * n + 6 * config.num_hidden_layers * config.hidden_size * mean_len


def retune_worker(model_dir: str, method: str, data: str, batch: int, steps: int, warmup: int, overrides: list[str]) -> dict:
    from retune.config import RetuneConfig, apply_override
    from retune.data.templates import Encoded
    from retune.models.load import load_base, prepare_for_training
    from retune.session import make_accelerator, setup_torch
    from retune.train.loop import Hooks, fit

    raw = {
        "model": {"base": model_dir},
        "adapter": {"type": method, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "trainer": {"batch_size": batch, "max_steps": steps, "log_every": 1, "lr": 2e-4},
    }
    for item in overrides:
        apply_override(raw, item)
    cfg = RetuneConfig.model_validate(raw)
    setup_torch(cfg)
    accelerator = make_accelerator(cfg)
    model = load_base(cfg, model_dir, trainable_full=method == "full")
    model = prepare_for_training(model, cfg, bf16_autocast=accelerator.mixed_precision == "bf16")
    examples = [Encoded(ids, list(ids), 0) for ids in (json.loads(line)["input_ids"] for line in open(data))]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as ckpt:
        hooks = Hooks(log=lambda r: rows.append({**r, "t": time.perf_counter()}))
        pack_to = cfg.data.max_length if cfg.data.packing is True else None  # --variant packed=data.packing=true
        fit(model, examples, [], cfg.trainer, model.config.eos_token_id, accelerator, Path(ckpt), hooks=hooks, pack_to=pack_to)
    by_step = {r["step"]: r for r in rows if "tokens" in r}
    first, last = by_step[warmup], by_step[steps]
    return {
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["t"] - first["t"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "allocator": allocator.active(),
    }


def run_one(tool: str, method: str, model_dir: str, data: str, a: argparse.Namespace, overrides: list[str]) -> dict:
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if tool == "baseline":  # a plain `python script.py`: the system malloc
        cmd = [sys.executable, str(HERE / "baseline_hf.py"), model_dir, method, data, *common]
        env.pop("LD_PRELOAD", None)
    else:
        # the malloc that the `retune` command would run on (retune/allocator.py); a variant may pick
        # another with allocator=NAME, which is not a config key
        sets = []
        for o in overrides:
            key, _, value = o.partition("=")
            if key == "allocator":
                env["RETUNE_ALLOCATOR"] = value
            else:
                sets.append(f"--set={o}")
        env = allocator.preload_env(env)
        cmd = [sys.executable, __file__, "--worker", method, "--model-dir", model_dir, "--data", data, *common, *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="built-in name or HF folder")
    ap.add_argument("--methods", default="full,lora,qlora")
    ap.add_argument("--tools", default="retune,baseline")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE]: an extra retune row with overrides")
    ap.add_argument("--set", dest="sets", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        print(json.dumps(retune_worker(a.model_dir, a.worker, a.data, a.batch, a.steps, a.warmup, a.sets)))
        return

    import torch

    from retune.models.resolve import resolve_base

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model_dir = resolve_base(a.model)
    tflops = matmul_tflops()
    seqs = make_sequences(model_dir, a.batch * a.steps, a.min_len, a.max_len)
    mean_len = sum(map(len, seqs)) / len(seqs)
    flops_tok = model_flops_per_token(model_dir, mean_len)
    print(
        f"bf16 matmul: {tflops:.3f} TFLOP/s; {len(seqs)} sequences, mean {mean_len:.0f} tokens; {flops_tok / 1e6:.0f} MFLOP per token",
        flush=True,
    )

    # (tool, variant name or None, config overrides)
    tools: list[tuple[str, str | None, list[str]]] = [(t, None, []) for t in a.tools.split(",")]
    for v in a.variant:
        name, _, sets = v.partition("=")
        if not sets:
            ap.error(f"--variant {v!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
        tools.append(("retune", name, sets.split(",")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "seqs.jsonl"
        data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
        for method in a.methods.split(","):
            for tool, variant, overrides in tools:
                t = time.perf_counter()
                r = run_one(tool, method, model_dir, str(data), a, overrides)
                row = {"tool": tool, **({"variant": variant} if variant else {}), "method": method, **r}
                if "tokens_per_s" in r:
                    row["mfu"] = r["tokens_per_s"] * flops_tok / (tflops * 1e12)
                rows.append(row)
                print(f"  {label(row):8} {method:5} {json.dumps(r)} ({time.perf_counter() - t:.0f} s)", flush=True)

    print_table(rows)
    if a.json_path:
        out = {
            "matmul_bf16_tflops": tflops,
            "model": a.model,
            "batch": a.batch,
            "steps": a.steps,
            "warmup": a.warmup,
            "min_len": a.min_len,
            "max_len": a.max_len,
            "mean_len": mean_len,
            "model_flops_per_token": flops_tok,
            # "rows" keeps the schema (tool: retune | baseline); --variant rows go beside it
            "rows": [r for r in rows if "variant" not in r],
            "variant_rows": [r for r in rows if "variant" in r],
            "variants": a.variant,
        }
        Path(a.json_path).write_text(json.dumps(out, indent=2) + "\n")


def label(row: dict) -> str:
    return f"retune[{row['variant']}]" if "variant" in row else row["tool"]


def print_table(rows: list[dict]) -> None:
    get = {(r["tool"], r["method"]): r for r in rows if "variant" not in r}
    width = max([9, *(len(label(r)) for r in rows)])
    print(f"\n{'method':8} {'tool':{width}} {'malloc':8} {'tokens/s':>9} {'peak RSS MB':>12} {'MFU':>6} {'speed x':>8} {'memory x':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:8} {label(r):{width}} error: {r['error']}")
            continue
        base = get.get(("baseline", r["method"]))
        sx = mx = ""
        if r["tool"] == "retune" and base and "tokens_per_s" in base:
            sx = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}"
            mx = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
        speed = f"{r['tokens_per_s']:9.1f} {r['peak_rss_mb']:12.0f} {r['mfu']:6.1%}"
        print(f"{r['method']:8} {label(r):{width}} {r.get('allocator', 'system'):8} {speed} {sx:>8} {mx:>9}")
    lora, qlora = get.get(("retune", "lora")), get.get(("retune", "qlora"))
    if lora and qlora and "tokens_per_s" in lora and "tokens_per_s" in qlora:
        print(
            f"retune QLoRA / LoRA: {qlora['tokens_per_s'] / lora['tokens_per_s']:.2f}x tokens/s, "
            f"{qlora['peak_rss_mb'] / lora['peak_rss_mb']:.2f}x peak RSS"
        )
    print("speed x / memory x: retune relative to the baseline for the same method")


if __name__ == "__main__":
    main()
