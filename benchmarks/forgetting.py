"""Forgetting benchmark v2: fine-tune SmolLM2-135M-Instruct on one new task and measure, with intervals
over seeds and examples, what it forgets of what it was never trained on here.

    python benchmarks/forgetting.py --quick                       # development: 1 seed, small sets
    python benchmarks/forgetting.py --sweep                       # the full run: lr sweep, every row, 3 seeds
    python benchmarks/forgetting.py --methods full,lora-r16 --seeds 0,1 --json out.json --md out.md --plot out.png

New task: rotten-tomatoes sentiment (accuracy by fp32 label likelihood). Its one-word answers are what makes
full fine-tuning forget: the tuned model answers a summary prompt with one word. Retained: MMLU as bf16 cloze
(topic-stratified), debian-descriptions (ROUGE-L) and python-code (chrF) by greedy generation, and the
general-text probe (token NLL). `--sweep` first trains plain full fine-tuning at each --sweep-lrs on
seed 0 and keeps the learning rate with the best validation accuracy (never the test set; on a tie, the
larger one). The default full-FT learning rate, 3e-5, is that sweep's answer at the full sizes
(validation accuracy 82.7 / 81.0 / 77.8 at 3e-5 / 1e-4 / 3e-4, n = 600, 100 steps of 8, at 8af2357);
at the --quick sizes it is also the stable one (at 1e-4 and 40 steps plain full FT lost accuracy).
The dose, 100 steps of 8, made plain full FT forget measurably at 1e-4 in a one-seed run at the
--quick retained sizes; at 3e-5 it forgot nothing significant there (benchmarks/results/forgetting.md).

It trains and scores in bf16, so it needs a CPU with AMX or AVX512-BF16 (elsewhere bf16 matmuls are
emulated: on an AVX2-only AMD EPYC, 0.7 against 64 GFLOP/s in fp32 for a 1024 and a 2048 square matmul) and says so before starting
(--any-cpu runs it anyway). It runs on tcmalloc where installed, the malloc `retune train` uses.

Base scores are computed once (the base model is the same for every row); each (method, seed) trains and
scores in its own subprocess (a clean peak-RSS measure). Every change is final - base on the same
examples; its interval is a hierarchical bootstrap (seeds, then examples, resampled), so it holds both
the seed-to-seed spread and the sampling error of the test sets. A retained change is significant when
its 95% interval excludes 0.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from retune import allocator

NEW = "rotten-tomatoes"
PROBE = "general-text"
REPLAY = {"method": "replay", "share": 0.1, "samples": 400}
DISTILL = {"method": "distill", "weight": 1.0, "prompts": ["retain"], "batch_size": 4}
# name: (adapter, LoRA rank, retention entries); weights are the config's defaults (a search over them is `retune tune`)
METHODS: dict[str, tuple[str, int, list[dict]]] = {
    "full": ("full", 0, []),
    "lora-r4": ("lora", 4, []),
    "lora-r16": ("lora", 16, []),
    "lora-r64": ("lora", 64, []),
    "full+ewc": ("full", 0, [{"method": "ewc", "weight": 1.0, "samples": 100}]),
    "full+si": ("full", 0, [{"method": "si", "weight": 1.0, "warmup_steps": 20}]),
    "full+l2sp": ("full", 0, [{"method": "l2sp", "weight": 1.0}]),
    "full+distill": ("full", 0, [DISTILL]),
    "full+replay": ("full", 0, [REPLAY]),
    "full+mix": ("full", 0, [{**REPLAY, "share": 0.5}]),  # multi-task mixing: half of each batch is retained-task data
    "lora-r16+distill+replay": ("lora", 16, [DISTILL, REPLAY]),
}
SIZES = {  # full run / --quick
    "train": (800, 400),
    "steps": (100, 40),
    "eval_new": (600, 200),
    "mmlu": (1000, 100),
    "debian": (300, 40),
    "python": (200, 30),
    "probe": (64, 16),
}


def config(args: argparse.Namespace, method: str, seed: int, lr: float | None = None) -> dict:
    adapter, r, retention = METHODS[method]
    return {
        "model": {"base": args.model},
        "adapter": {"type": adapter, "r": r or 16, "alpha": 2 * (r or 16), "target_modules": "all-linear", "dropout": 0.0},
        "data": {
            "train": NEW,
            "max_train_samples": args.train,
            "max_eval_samples": args.eval_new,
            "max_length": 256,
            "truncate_response": True,
        },
        # MMLU cloze in bf16 (95 s for 1,000 questions instead of 221 s in fp32); the new task's label
        # likelihoods stay in fp32 (score_new), where bf16 ties moved the base score by up to 2 points
        # batch 32: greedy generation of the retained tasks 62 -> 57 s per model (fewer decode steps)
        "eval": {"batch_size": 32, "likelihood_fp32": False},
        "trainer": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "lr": lr or (args.lr_full if adapter == "full" else args.lr_lora),
            "seed": seed,
            "log_every": 10,
            "scheduler": "constant",
        },
        "retain": {
            "tasks": [
                {"train": "mmlu-cloze", "max_eval_samples": args.mmlu},
                {"train": "debian-descriptions", "metric": "rouge_l", "max_new_tokens": 24, "max_eval_samples": args.debian},
                {"train": "python-code", "metric": "chrf", "max_new_tokens": 48, "max_eval_samples": args.python},
            ],
            "probe": "general",
            "probe_samples": args.probe,
        },
        "retention": retention,
    }


def setup(args: argparse.Namespace, method: str, seed: int = 0, lr: float | None = None):
    import torch

    from retune.config import validate
    from retune.data.dataset import load_task_config
    from retune.data.templates import Formatter
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base
    from retune.session.retain import Retention

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = validate(config(args, method, seed, lr))
    path = resolve_base(cfg.model.base)
    tok = load_tokenizer(path, cfg.model)
    fmt = Formatter(tok, cfg.data)
    task = load_task_config(cfg.data.task_list()[0], cfg.data, cfg.eval)
    ret = Retention.load(cfg, tok, fmt)
    for r in ret.rset.tasks:  # retained tasks are compared by their metric; their validation loss is not used here
        r.val = []
    return cfg, path, tok, fmt, task, ret


def score_new(model, tok, fmt, task, cfg, autocast, split: str = "test") -> list[float]:
    """The new task's per-example scores (0/1) on its test (or validation) set."""
    from dataclasses import replace

    from retune.evaluate.task_eval import score_task

    t = replace(task, test=task.validation) if split == "validation" else task
    ev = cfg.eval.model_copy(update={"likelihood_fp32": True})
    return score_task(model, tok, fmt, t, [], ev, autocast).examples[task.metric]


def bf16():
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


def base_scores(args: argparse.Namespace) -> dict:
    from retune.models.load import load_base

    cfg, path, tok, fmt, task, ret = setup(args, "lora-r16")
    model = load_base(cfg, path)
    scored = ret.score_base(model, bf16)
    return {"new": score_new(model, tok, fmt, task, cfg, bf16), "retained": scored.to_json()}


def run_one(args: argparse.Namespace, method: str, seed: int, lr: float | None, base: dict, split: str) -> dict:
    """Train one (method, seed) and score it; runs in a fresh process."""
    from accelerate import Accelerator

    from retune.evaluate.forgetting import RetainedScores
    from retune.models import loss as loss_mod
    from retune.models.load import load_base, prepare_for_training
    from retune.train.loop import Hooks, fit

    t0 = time.perf_counter()
    cfg, path, tok, fmt, task, ret = setup(args, method, seed, lr)
    ret.base = RetainedScores.from_json(base["retained"])
    train = [fmt.encode_record(task.template, r, f"train {i}") for i, r in enumerate(task.train)]
    model = load_base(cfg, path, trainable_full=cfg.adapter.type == "full")
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    train = ret.replay(model, train, accelerator.autocast)
    model = prepare_for_training(model, cfg, True)
    loss_mod.USE_COMPILE = cfg.trainer.compile
    log_rows: list[dict] = []
    regs = ret.regularizers(model, tok.pad_token_id, accelerator.autocast, log_rows.append)
    out_dir = Path(args.work) / f"{method.replace('+', '_')}-s{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = cfg.trainer.model_copy(update={"save_every": None, "keep_checkpoints": 1})
    t_fit = time.perf_counter()
    state = fit(model, train, [], trainer, tok.pad_token_id, accelerator, out_dir, regs, Hooks(log=log_rows.append))
    shutil.rmtree(out_dir)  # the final checkpoint (up to 4 GB with SI's state): the weights are in memory
    model = accelerator.unwrap_model(model)
    if cfg.adapter.type == "lora":
        # scored with the adapter merged into the bf16 base (W + BA rounded once to bf16): 171 s instead
        # of 209 s per run for the unmerged adapter's extra matmuls (both round to bf16 somewhere)
        model = model.merge_and_unload()
    t_score = time.perf_counter()
    out = {"method": method, "seed": seed, "lr": cfg.trainer.lr, "new": score_new(model, tok, fmt, task, cfg, bf16, split)}
    if split == "test":
        out["retained"] = ret.score(model, bf16).to_json()
    return {
        **out,
        "wall_s": time.perf_counter() - t0,
        "phases_s": {"prepare": t_fit - t0, "train": t_score - t_fit, "score": time.perf_counter() - t_score},
        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ------------------------------------------------------------- aggregation


def hier_bootstrap(diffs: list[list[float]], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of final - base over seeds and examples, with a 95% interval from resampling seeds, then
    examples (the same examples for every seed: the pairing is kept)."""
    d = np.asarray(diffs, dtype=float)  # (seeds, examples)
    rng = np.random.default_rng(seed)
    s = rng.integers(0, d.shape[0], size=(resamples, d.shape[0]))
    i = rng.integers(0, d.shape[1], size=(resamples, d.shape[1]))
    stats = np.array([d[s[b]][:, i[b]].mean() for b in range(resamples)])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def aggregate(method: str, runs: list[dict], base: dict) -> dict:
    """One table row: the new task's gain and each retained change, in points (the probe: NLL nats)."""
    scale = 100.0
    b_new = np.asarray(base["new"])
    gain = hier_bootstrap([np.asarray(r["new"]) - b_new for r in runs])
    row = {
        "method": method,
        "seeds": [r["seed"] for r in runs],
        "lr": runs[0]["lr"],
        "new_task": {
            "task": NEW,
            "n": len(b_new),
            "base": scale * b_new.mean(),
            "final": scale * float(np.mean([np.mean(r["new"]) for r in runs])),
            "gain": scale * gain[0],
            "ci": [scale * gain[1], scale * gain[2]],
        },
        "retention": {},
        "wall_s": float(np.mean([r["wall_s"] for r in runs])),
        "peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)),
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs])),
    }
    for task, b in base["retained"]["examples"].items():
        k = 1.0 if task == PROBE else scale
        b = np.asarray(b)
        delta, lo, hi = hier_bootstrap([np.asarray(r["retained"]["examples"][task]) - b for r in runs])
        worse = hi < 0 if task != PROBE else lo > 0  # the probe is an NLL: a rise is a loss
        row["retention"][task] = {
            "metric": "nll" if task == PROBE else "score",
            "n": len(b),
            "base": k * b.mean(),
            "final": k * (b.mean() + delta),
            "delta": k * delta,
            "ci": [k * lo, k * hi],
            "significant": lo > 0 or hi < 0,
            "forgotten": bool(worse),
        }
    return row


def worst(row: dict) -> tuple[str, dict]:
    """The retained task (not the probe: another unit) with the most negative change."""
    tasks = {k: v for k, v in row["retention"].items() if k != PROBE}
    name = min(tasks, key=lambda k: tasks[k]["delta"])
    return name, tasks[name]


def findings(rows: list[dict]) -> list[str]:
    """The issue's two checks, computed: plain full FT's significant losses, and which mitigations keep
    every retained task free of a significant loss at >= 90% of full FT's mean gain."""
    out = []
    full = next((r for r in rows if r["method"] == "full"), None)
    if full is None:
        return ["no plain full fine-tuning row: nothing to compare with"]
    lost = [k for k, v in full["retention"].items() if v["forgotten"]]
    out.append(
        f"plain full FT: gain {full['new_task']['gain']:+.1f}; significant losses on {len(lost)} retained: {', '.join(lost) or 'none'}"
    )
    bar = 0.9 * full["new_task"]["gain"]
    ok = [
        r["method"]
        for r in rows
        if r is not full and r["new_task"]["gain"] >= bar and not any(v["forgotten"] for v in r["retention"].values())
    ]
    out.append(f">= 90% of full FT's gain ({bar:+.1f}) with no significant retained loss: {', '.join(ok) or 'no method'}")
    return out


def table(result: dict) -> str:
    rows = result["rows"]
    tasks = list(rows[0]["retention"]) if rows else []
    head = ["method", "seeds", f"{NEW} gain [95% CI]", *[f"{t} change" for t in tasks], "s / run", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = r["new_task"]
        cells = [r["method"], str(len(r["seeds"])), f"{g['gain']:+.1f} [{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}]"]
        for t in tasks:
            v, f = r["retention"][t], ".3f" if t == PROBE else ".1f"
            cells.append(f"{v['delta']:+{f}} [{v['ci'][0]:+{f}}, {v['ci'][1]:+{f}}]{' *' if v['significant'] else ''}")
        cells += [f"{r['wall_s']:.0f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    for r in result["rows"]:
        _, w = worst(r)
        g = r["new_task"]
        xerr = [[w["delta"] - w["ci"][0]], [w["ci"][1] - w["delta"]]]
        yerr = [[g["gain"] - g["ci"][0]], [g["ci"][1] - g["gain"]]]
        ax.errorbar(w["delta"], g["gain"], xerr=xerr, yerr=yerr, fmt="o", ms=4, capsize=2, lw=0.8)
        ax.annotate(r["method"], (w["delta"], g["gain"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(0.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("worst retained change (points; 95% CI over seeds and examples)")
    ax.set_ylabel(f"gain on {NEW} (accuracy points)")
    ax.set_title("gain vs forgetting, SmolLM2-135M-Instruct (up and right is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


# ------------------------------------------------------------- driver


def code_key(args: argparse.Namespace) -> str:
    """What a result depends on: the code under src/retune, this script, and the sizes and settings. A
    result saved under another key is never reused (results are re-run when the code under them changes)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in [*sorted((root / "src" / "retune").rglob("*.py")), Path(__file__).resolve()]:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    h.update(json.dumps({k: getattr(args, k) for k in (*SIZES, "model", "batch", "lr_lora")}, sort_keys=True).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(path: str | None):
    """Hold an exclusive flock on `path` (the machine's one-heavy-job lock) for the duration, if given:
    each (method, seed) is then measured alone while other jobs run between them."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(path: Path, make):
    """The JSON saved at `path`, or make() saved there atomically (a finished (method, seed) survives a
    stopped benchmark: the same command continues where it stopped)."""
    if path.exists():
        return json.loads(path.read_text())
    out = make()
    if out is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    return out


def child(args: argparse.Namespace, base_file: Path, method: str, seed: int, lr: float | None, split: str) -> dict | None:
    name = f"{method.replace('+', '_')}-s{seed}-{split}" + (f"-lr{lr:g}" if lr is not None else f"-lr{args.lr_full:g}")
    return cached(base_file.parent / f"{name}.json", lambda: _child(args, base_file, method, seed, lr, split))


def _child(args: argparse.Namespace, base_file: Path, method: str, seed: int, lr: float | None, split: str) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        *sys.argv[1:],
        "--one",
        method,
        "--seed-one",
        str(seed),
        "--base-file",
        str(base_file),
        "--split",
        split,
    ]
    if lr is not None:
        cmd += ["--lr-one", str(lr)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"{method} seed {seed}: failed\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(line[7:])


def sweep(args: argparse.Namespace, base_file: Path) -> tuple[float, list[dict]]:
    """Plain full FT at each learning rate on seed 0, scored on the validation split; the best lr."""
    tried = []
    for lr in (float(x) for x in args.sweep_lrs.split(",")):
        r = child(args, base_file, "full", 0, lr, "validation")
        if r is not None:
            tried.append({"lr": lr, "validation_accuracy": 100.0 * float(np.mean(r["new"])), "wall_s": r["wall_s"]})
            print(f"sweep: full FT lr {lr:g}: validation accuracy {tried[-1]['validation_accuracy']:.1f}", flush=True)
    if not tried:
        sys.exit("the learning-rate sweep failed for every lr")
    return max(tried, key=lambda t: (t["validation_accuracy"], t["lr"]))["lr"], tried  # a tie: the larger lr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    ap.add_argument("--quick", action="store_true", help="development: 1 seed and the small sizes")
    ap.add_argument("--seeds", default=None, help="comma list (default 0,1,2; --quick: 0)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (a built-in, folder or hub id)")
    for key, (full, _) in SIZES.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {full} (--quick: {SIZES[key][1]})")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr-full", type=float, default=3e-5, help="full FT learning rate (replaced by the sweep's best)")
    ap.add_argument("--lr-lora", type=float, default=5e-4)
    ap.add_argument("--sweep", action="store_true", help="choose --lr-full by validation accuracy first")
    ap.add_argument("--sweep-lrs", default="3e-5,1e-4,3e-4")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--work", default="/tmp/retune-forgetting", help="scratch folder; finished runs are kept there and reused")
    ap.add_argument("--lock", default=None, help="a flock file held by each run (not between runs), e.g. /tmp/retune-cpu.lock")
    ap.add_argument("--any-cpu", action="store_true", help="run on a CPU without fast bf16 (AMX / AVX512-BF16) too")
    for hidden in ("--one", "--seed-one", "--base-file", "--split", "--lr-one"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    allocator.reexec()  # on the malloc `retune train` runs on (tcmalloc where installed); the children inherit it
    from retune.models.load import bf16_fast

    if not bf16_fast() and not args.any_cpu:  # bf16 without AMX / AVX512-BF16: emulated, about 90x slower than fp32
        print(
            "error: this CPU has no AMX or AVX512-BF16, and the benchmark trains and scores in bf16 (its timings and "
            "scores are for such a CPU); run it on one, or pass --any-cpu to run it here anyway (for hours)",
            file=sys.stderr,
        )
        sys.exit(2)
    for key, (full, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    if args.one:  # child: one (method, seed)
        base = json.loads(Path(args.base_file).read_text())
        lr = float(args.lr_one) if args.lr_one else None
        with locked(args.lock):
            print("RESULT " + json.dumps(run_one(args, args.one, int(args.seed_one), lr, base, args.split)), flush=True)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method {unknown[0]} (choose from {', '.join(METHODS)})")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    t0 = time.perf_counter()
    key = code_key(args)
    base_file = Path(args.work) / key / "base.json"

    def score_base() -> dict:
        with locked(args.lock):
            t = time.perf_counter()
            return {**base_scores(args), "wall_s": time.perf_counter() - t}

    base = cached(base_file, score_base)
    print(f"base scored ({base['wall_s']:.0f} s; results under {base_file.parent})", flush=True)
    lr_sweep = None
    if args.sweep:
        args.lr_full, lr_sweep = sweep(args, base_file)
        sys.argv += ["--lr-full", str(args.lr_full)]  # the children read the chosen lr
    rows = []
    spent = base["wall_s"] + sum(t["wall_s"] for t in lr_sweep or [])
    done: dict[str, list[dict]] = {m: [] for m in methods}
    for s in seeds:  # seed-major: a stopped run leaves every row with the same seeds
        for m in methods:
            if (r := child(args, base_file, m, s, None, "test")) is not None:
                done[m].append(r)
    for m in methods:
        runs = done[m]
        spent += sum(r["wall_s"] for r in runs)
        if runs:
            rows.append(aggregate(m, runs, base))
            g = rows[-1]["new_task"]
            name, w = worst(rows[-1])
            print(f"{m}: gain {g['gain']:+.1f} [{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}]; worst retained {name} {w['delta']:+.1f}", flush=True)
    result = {
        "command": "python benchmarks/forgetting.py " + " ".join(a for a in sys.argv[1:]),
        "model": args.model,
        "sizes": {k: getattr(args, k) for k in SIZES},
        "lr_full": args.lr_full,
        "lr_lora": args.lr_lora,
        "lr_sweep": lr_sweep,
        "rows": rows,
        "findings": findings(rows),
        "total_s": time.perf_counter() - t0,
        "compute_s": spent,  # the runs' own wall times: the total without waits for the lock or reuse
    }
    print(table(result))
    print("\n".join(result["findings"]))
    print(f"total {result['total_s']:.0f} s; the runs themselves {spent:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.md:
        args.md.write_text(
            f"Command: `{result['command']}` (runs: {spent / 60:.0f} min, each alone; wall {result['total_s'] / 60:.0f} min)\n\n"
            f"{table(result)}\n\n"
            "Changes: final - base in points (probe: NLL nats), mean over seeds; [95% CI] from a hierarchical bootstrap over seeds "
            "and examples; * the interval excludes 0.\n\n" + "\n".join(f"- {f}" for f in result["findings"]) + "\n"
        )
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
