"""Forgetting benchmark: fine-tune SmolLM2-135M-Instruct on movie-review sentiment and measure what
it forgets of two tasks it was never trained on here (summarising Debian package descriptions,
writing Python function bodies), for plain full fine-tuning, LoRA, and each mitigation.

    python benchmarks/forgetting.py                                # every method, default sizes
    python benchmarks/forgetting.py --methods full,lora --steps 10  # a short run
    python benchmarks/forgetting.py --json benchmarks/results/forgetting.json --plot benchmarks/results/forgetting.png

Every method runs in its own subprocess (a clean peak-RSS measure) from the same base scores.
New task: rotten-tomatoes accuracy (label likelihood). Retained: debian-descriptions ROUGE-L and
python-code chrF, both by greedy generation on held-out examples, in points (x100).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = {
    # name: (adapter, retention entries, trainer overrides)
    "full": ("full", [], {}),
    "lora": ("lora", [], {}),
    "full+ewc": ("full", [{"method": "ewc", "weight": 1.0, "samples": 100}], {}),
    "full+si": ("full", [{"method": "si", "weight": 1.0, "warmup_steps": 20}], {}),
    "full+l2sp": ("full", [{"method": "l2sp", "weight": 1.0}], {}),
    "full+distill": ("full", [{"method": "distill", "weight": 1.0, "prompts": ["retain"], "batch_size": 4}], {}),
    "lora+distill": ("lora", [{"method": "distill", "weight": 1.0, "prompts": ["retain"], "batch_size": 4}], {}),
    "full+replay10": ("full", [{"method": "replay", "share": 0.1, "samples": 200}], {}),
}
NEW = "rotten-tomatoes"
RETAINED = {"debian-descriptions": {"metric": "rouge_l", "max_new_tokens": 24}, "python-code": {"metric": "chrf", "max_new_tokens": 48}}


def config(args: argparse.Namespace, method: str) -> dict:
    adapter, retention, trainer = METHODS[method]
    lr = args.lr_full if adapter == "full" else args.lr_lora
    return {
        "model": {"base": args.model},
        "adapter": {"type": adapter, "r": 16, "alpha": 32, "target_modules": "all-linear", "dropout": 0.0},
        "data": {
            "train": NEW,
            "max_train_samples": args.train,
            "max_eval_samples": args.eval_new,
            "max_length": 256,
            "truncate_response": True,
        },
        "eval": {"batch_size": 16},
        "trainer": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "lr": lr,
            "seed": 0,
            "log_every": 10,
            "scheduler": "constant",
            **trainer,
        },
        "retain": {
            "tasks": [{"train": name, "max_eval_samples": args.eval_retain, **kw} for name, kw in RETAINED.items()],
            "probe": "general",
            "probe_samples": 48,
        },
        "retention": retention,
    }


def setup(args: argparse.Namespace, method: str):
    import torch

    from retune.config import validate
    from retune.data.dataset import load_task_config
    from retune.data.templates import Formatter
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base
    from retune.session.retain import Retention

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = validate(config(args, method))
    path = resolve_base(cfg.model.base)
    tok = load_tokenizer(path, cfg.model)
    fmt = Formatter(tok, cfg.data)
    task = load_task_config(cfg.data.task_list()[0], cfg.data, cfg.eval)
    return cfg, path, tok, fmt, task, Retention.load(cfg, tok, fmt)


def score_new(model, tok, fmt, task, cfg, autocast) -> float:
    from retune.evaluate.task_eval import evaluate_task

    return 100.0 * evaluate_task(model, tok, fmt, task, [], cfg.eval, autocast)[task.metric]


def base_scores(args: argparse.Namespace) -> dict:
    import torch

    from retune.evaluate.forgetting import primary
    from retune.models.load import load_base

    cfg, path, tok, fmt, task, ret = setup(args, "lora")
    model = load_base(cfg, path)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    out = {NEW: score_new(model, tok, fmt, task, cfg, autocast)}
    raw = ret.score_base(model, autocast)
    out.update({name: primary(name, s)[1] for name, s in raw.items()})
    return {"scores": out, "raw": raw}


def run_one(args: argparse.Namespace, method: str, base: dict) -> dict:
    """Train one method and score it; runs in a fresh process."""
    from accelerate import Accelerator

    from retune.evaluate.forgetting import retention_summary
    from retune.models import loss as loss_mod
    from retune.models.load import load_base, prepare_for_training
    from retune.train.loop import Hooks, fit

    t0 = time.perf_counter()
    cfg, path, tok, fmt, task, ret = setup(args, method)
    ret.base = base["raw"]
    train = [fmt.encode_record(task.template, r, f"train {i}") for i, r in enumerate(task.train)]
    full = cfg.adapter.type == "full"
    model = load_base(cfg, path, trainable_full=full)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    autocast = accelerator.autocast
    train = ret.replay(model, train, autocast)
    model = prepare_for_training(model, cfg, True)
    loss_mod.USE_COMPILE = cfg.trainer.compile
    log_rows: list[dict] = []
    regs = ret.regularizers(model, tok.pad_token_id, autocast, log_rows.append)
    out_dir = Path(args.work) / method.replace("+", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg.trainer.model_copy(update={"save_every": None, "keep_checkpoints": 1})
    state = fit(model, train, [], trainer, tok.pad_token_id, accelerator, out_dir, regs, Hooks(log=log_rows.append))
    model = accelerator.unwrap_model(model)
    new_final = score_new(model, tok, fmt, task, cfg, autocast)
    final = ret.score(model, autocast)
    retention = retention_summary(base["raw"], final)
    b = base["scores"][NEW]
    return {
        "method": method,
        "new_task": {"base": b, "final": new_final, "gain": new_final - b},
        "retention": {k: {"base": v["base"], "final": v["final"], "delta": v["delta"]} for k, v in retention.items()},
        "wall_s": time.perf_counter() - t0,
        "train_s": state.train_seconds,
        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "examples": len(train),
        "log": [r for r in log_rows if "event" in r],
    }


def table(result: dict) -> str:
    tasks = list(next(iter(result["rows"]))["retention"]) if result["rows"] else []
    head = ["method", f"{NEW} gain", *[f"{t} delta" for t in tasks], "wall s", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["method"], f"{r['new_task']['gain']:+.1f}"]
        for t in tasks:
            d = r["retention"][t]["delta"]
            cells.append(f"{d:+.4f}" if t == "general-text" else f"{d:+.1f}")
        cells += [f"{r['wall_s']:.0f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for r in result["rows"]:
        deltas = [v["delta"] for k, v in r["retention"].items() if k != "general-text"]
        worst = -min(deltas) if deltas else 0.0  # forgetting: the largest drop, points
        ax.scatter(worst, r["new_task"]["gain"], s=40)
        ax.annotate(r["method"], (worst, r["new_task"]["gain"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(2.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("forgetting: largest drop on a retained task (points)")
    ax.set_ylabel(f"gain on {NEW} (accuracy points)")
    ax.set_title("stability vs plasticity (SmolLM2-135M-Instruct)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (a built-in, folder or hub id)")
    ap.add_argument("--train", type=int, default=400, help="rotten-tomatoes training examples")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per method")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr-full", type=float, default=5e-5)
    ap.add_argument("--lr-lora", type=float, default=5e-4)
    ap.add_argument("--eval-new", type=int, default=200, help="rotten-tomatoes test examples")
    ap.add_argument("--eval-retain", type=int, default=64, help="test examples per retained task")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="stability-plasticity PNG")
    ap.add_argument("--md", type=Path, help="markdown table")
    ap.add_argument("--work", default="/tmp/retune-forgetting", help="scratch folder")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--base-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    if args.one:  # child: one method
        base = json.loads(Path(args.base_file).read_text())
        print("RESULT " + json.dumps(run_one(args, args.one, base)), flush=True)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method {unknown[0]} (choose from {', '.join(METHODS)})")
    t0 = time.perf_counter()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    base = base_scores(args)
    base_file = Path(args.work) / "base.json"
    base_file.write_text(json.dumps(base))
    print(f"base: {json.dumps(base['scores'])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    passthrough = [a for a in sys.argv[1:]]
    for m in methods:
        cmd = [sys.executable, __file__, *passthrough, "--one", m, "--base-file", str(base_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{m}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(line[7:])
        rows.append(row)
        print(
            f"{m}: gain {row['new_task']['gain']:+.1f}, "
            + ", ".join(f"{k} {v['delta']:+.3f}" for k, v in row["retention"].items())
            + f", {row['wall_s']:.0f} s",
            flush=True,
        )
    result = {
        "base": base["scores"],
        "rows": rows,
        "total_s": time.perf_counter() - t0,
        "command": "python benchmarks/forgetting.py " + " ".join(passthrough),
    }
    print(table(result))
    print(f"total {result['total_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.md:
        base_line = json.dumps({k: round(v, 4) for k, v in base["scores"].items()})
        args.md.write_text(f"Command: `{result['command']}`\n\nBase: {base_line}\n\n{table(result)}\n\nTotal {result['total_s']:.0f} s.\n")
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
