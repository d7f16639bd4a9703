"""Training under a busy CPU: tokens/s idle and with one competing CPU-bound process, before and after
retune's thread handling (train/threads.py), side by side in one run.

    python benchmarks/contention.py                     # SmolLM2-135M LoRA, batch 4, sequences of 32-128 tokens
    python benchmarks/contention.py --steps 8 --json out.json

Each setting trains in its own process (OpenMP reads its environment once, at start) for --steps
optimizer steps; tokens/s counts non-pad tokens over the steps after --warmup. For the "busy" rows the
script starts one competitor (a pure-Python busy loop: one core's worth of CPU-bound work, at the
same priority as training; --competitors N starts N) before the training process and stops it after.

Settings:
- before: what retune did before: one OpenMP thread per core, always; OpenMP's default wait policy
  (threads spin at every barrier before they sleep);
- passive: the same with OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers), the fix the issue
  suggested, measured for comparison;
- after: retune's default (train/threads.py): the thread count follows the cores that other
  processes leave free, measured as training runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SETTINGS = ("before", "passive", "after")


def worker(model_dir: str, data: str, batch: int, steps: int, warmup: int, setting: str) -> dict:
    import torch

    from retune.config import RetuneConfig
    from retune.data.templates import Encoded
    from retune.models.load import load_base, prepare_for_training
    from retune.session import make_accelerator, setup_torch
    from retune.train.loop import Hooks, fit

    raw: dict = {
        "model": {"base": model_dir},
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "trainer": {"batch_size": batch, "max_steps": steps, "log_every": 1, "lr": 2e-4},
    }
    if setting in ("before", "passive"):  # the old default, fixed: one thread per core this process may use
        raw["trainer"]["threads"] = len(os.sched_getaffinity(0))
    cfg = RetuneConfig.model_validate(raw)
    setup_torch(cfg)
    accelerator = make_accelerator(cfg)
    model = load_base(cfg, model_dir)
    model = prepare_for_training(model, cfg, bf16_autocast=accelerator.mixed_precision == "bf16")
    examples = [Encoded(ids, list(ids), 0) for ids in (json.loads(line)["input_ids"] for line in open(data))]
    rows: list[dict] = []
    used: list[int] = []
    with tempfile.TemporaryDirectory() as ckpt:

        def log(r: dict) -> None:
            rows.append({**r, "t": time.perf_counter()})
            used.append(torch.get_num_threads())

        fit(model, examples, [], cfg.trainer, model.config.eos_token_id, accelerator, Path(ckpt), hooks=Hooks(log=log))
    by_step = {r["step"]: r for r in rows if "tokens" in r}
    first, last = by_step[warmup], by_step[steps]
    return {
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["t"] - first["t"]),
        "threads": sorted(set(used)),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def run(setting: str, busy: bool, model_dir: str, data: str, a: argparse.Namespace) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)  # OpenMP's own default (threads spin at barriers before they sleep)
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--worker", setting, "--model-dir", model_dir, "--data", data]
    cmd += ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.competitors if busy else 0)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {a.timeout} s"}
    finally:
        for c in competitors:
            c.kill()
            c.wait()
    if proc.returncode != 0:
        return {"error": " | ".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="built-in name or HF folder")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--competitors", type=int, default=1, help="CPU-bound processes running beside training in the busy rows")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.model_dir, a.data, a.batch, a.steps, a.warmup, a.worker)))
        return

    from retune.models.resolve import resolve_base
    from throughput import make_sequences

    model_dir = resolve_base(a.model)
    seqs = make_sequences(model_dir, a.batch * a.steps, a.min_len, a.max_len)
    cores = len(os.sched_getaffinity(0))
    print(
        f"{a.model}, LoRA, batch {a.batch}, {a.steps} steps ({a.warmup} warm-up), {cores} cores, busy: {a.competitors} competitor(s)",
        flush=True,
    )
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "seqs.jsonl"
        data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
        for setting in a.settings.split(","):
            for busy in (False, True):
                t = time.perf_counter()
                r = run(setting, busy, str(model_dir), str(data), a)
                results.setdefault(setting, {})["busy" if busy else "idle"] = r
                print(f"  {setting:7} {'busy' if busy else 'idle'}: {json.dumps(r)} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\n{'setting':8} {'idle tok/s':>11} {'busy tok/s':>11} {'busy / idle':>12}")
    for setting, r in results.items():
        idle, busy = r["idle"].get("tokens_per_s"), r["busy"].get("tokens_per_s")
        ratio = f"{busy / idle:.2f}" if idle and busy else "-"
        print(f"{setting:8} {idle or 0:11.1f} {busy or 0:11.1f} {ratio:>12}")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"args": vars(a), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
