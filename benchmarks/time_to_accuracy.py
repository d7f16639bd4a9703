"""Time to accuracy on the quickstart task: retune (default, and without packing) vs TRL's SFTTrainer
with packing vs a plain Hugging Face Trainer + PEFT, in one run, side by side.

    python benchmarks/time_to_accuracy.py --json benchmarks/results/time_to_accuracy.json
    python benchmarks/time_to_accuracy.py --quick                  # a short smoke run (minutes)
    python benchmarks/time_to_accuracy.py --contenders retune,trl-packing --skip-throughput

Every contender trains examples/quickstart.yaml's task (SmolLM2-135M-Instruct, LoRA r/alpha/dropout/
targets, lr, batch size, schedule, data.max_length and bf16 autocast from the config) on the same
token ids: retune's chat-formatted examples, loss on the response tokens only (TRL gets them
pre-tokenised with their labels, which its packing keeps). Every --eval-every optimizer steps it
is scored on the same held-out reviews by ONE function, retune's label-likelihood scoring
(evaluate/scoring.label_loglik, labels ranked as in fp32, the quickstart's scoring), with the training clock stopped:
the times are training wall seconds (from the framework's train call; evaluation excluded). A
contender stops at the first evaluation at or above the highest --targets, or once its clock passes
--cap-factor x retune's time to its highest target reached (the first contender sets the cap).

Then tokens/s and peak RSS on a mixed-length set (debian-descriptions + python-code built-ins,
data.max_length --mixed-length): --mixed-steps optimizer steps, tokens/s over those after
--mixed-warmup (non-pad tokens; TRL's steps hold more examples, packed). Each contender runs in its
own process (its own peak RSS). retune runs on the malloc the `retune` command picks (tcmalloc), the
others on the system malloc, as a plain `python script.py` does.
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONTENDERS = ("retune", "retune-nopack", "trl-packing", "hf-trainer")
QUICK = ["data.max_train_samples=96", "data.max_eval_samples=48"]


class Clock:
    """A stopwatch that can be paused: training seconds with evaluations taken out."""

    def __init__(self, now: Any = time.perf_counter) -> None:
        self.now = now
        self.total = 0.0
        self.since: float | None = None

    def start(self) -> None:
        if self.since is None:
            self.since = self.now()

    def pause(self) -> float:
        if self.since is not None:
            self.total += self.now() - self.since
            self.since = None
        return self.total

    def elapsed(self) -> float:
        return self.total + (self.now() - self.since if self.since is not None else 0.0)


def first_reached(history: list[dict], target: float) -> dict | None:
    """The first evaluation with accuracy >= target (history in training order), or None."""
    return next((h for h in history if h["accuracy"] >= target), None)


def cap_seconds(history: list[dict], targets: list[float], factor: float) -> float:
    """factor x the training seconds to the highest target reached (the whole run's when none was)."""
    for t in sorted(targets, reverse=True):
        hit = first_reached(history, t)
        if hit is not None:
            return factor * hit["train_seconds"]
    return factor * history[-1]["train_seconds"]


def time_table(rows: list[dict], targets: list[float], reference: str = "trl-packing") -> dict[str, dict[str, Any]]:
    """Per target: each contender's seconds to it (None: not reached), its best accuracy, and the ratio
    of each retune row to `reference`; a lower bound (`ratio_below`) when the reference was capped."""
    out: dict[str, dict[str, Any]] = {}
    by_name = {r["contender"]: r for r in rows if r.get("history")}
    for t in targets:
        entry: dict[str, Any] = {}
        for name, r in by_name.items():
            hit = first_reached(r["history"], t)
            entry[name] = {
                "seconds": hit["train_seconds"] if hit else None,
                "step": hit["step"] if hit else None,
                "best_accuracy": max(h["accuracy"] for h in r["history"]),
                "trained_seconds": r["history"][-1]["train_seconds"],
            }
        ref = entry.get(reference)
        for name in entry:
            mine = entry[name]["seconds"]
            if not name.startswith("retune") or ref is None or mine is None:
                continue
            if ref["seconds"] is not None:
                entry[name][f"ratio_to_{reference}"] = mine / ref["seconds"]
            else:  # the reference did not get there in all the time it trained
                entry[name][f"ratio_to_{reference}_below"] = mine / ref["trained_seconds"]
        out[f"{t:.2f}"] = entry
    return out


def export_task(config: str, overrides: list[str], path: Path) -> dict:
    """The task as token ids, written once for every contender: training examples (retune's encoding,
    in the order of the first epoch's examples), test prompts, label ids, gold label indices."""
    from retune.config import load_config
    from retune.evaluate.task_eval import _resp_ids
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base
    from retune.session.prepare import prepare_data

    cfg = load_config(config, overrides)
    model_dir = resolve_base(cfg.model.base)
    tok = load_tokenizer(model_dir, cfg.model)
    prep = prepare_data(cfg, tok)
    task = prep.tasks[0]
    pairs = [prep.fmt.record_prompt(task.template, r) for r in task.test]
    labels = task.labels or []
    spec = {
        "config": config,
        "overrides": overrides,
        "model_dir": model_dir,
        "pad_id": tok.pad_token_id,
        "train": [{"input_ids": e.input_ids, "labels": e.labels} for e in prep.epoch_examples(0)],
        "test_prompts": [prep.fmt.prompt_ids(p) for p, _ in pairs],
        "label_ids": [_resp_ids(prep.fmt, label) for label in labels],
        "gold": [labels.index(ref) for _, ref in pairs],
        "hp": hyperparameters(cfg),
    }
    path.write_text(json.dumps(spec))
    return spec


def hyperparameters(cfg: Any) -> dict:
    t, a = cfg.trainer, cfg.adapter
    return {
        "lr": t.lr,
        "batch_size": t.batch_size,
        "epochs": t.epochs,
        "warmup_ratio": t.warmup_ratio,
        "scheduler": t.scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "r": a.r,
        "alpha": a.alpha,
        "dropout": a.dropout,
        "target_modules": a.target_modules,
        "max_length": cfg.data.max_length,
    }


def export_mixed(config: str, max_length: int, n: int, path: Path) -> dict:
    """n examples from debian-descriptions + python-code (half each, interleaved), retune's encoding,
    responses cut to fit max_length."""
    from retune.config import load_config
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base
    from retune.session.prepare import prepare_data

    sets = []
    for name in ("debian-descriptions", "python-code"):
        sets_ = [f"data.train={name}", f"data.max_train_samples={n}", "data.max_eval_samples=8", f"data.max_length={max_length}"]
        cfg = load_config(config, [*sets_, "data.truncate_response=true"])  # long code bodies are cut to fit
        model_dir = resolve_base(cfg.model.base)
        sets.append(prepare_data(cfg, load_tokenizer(model_dir, cfg.model)).epoch_examples(0))
    mixed = [e for pair in zip(*sets, strict=False) for e in pair][:n]
    spec = {
        "model_dir": model_dir,
        "pad_id": load_tokenizer(model_dir, cfg.model).pad_token_id,
        "train": [{"input_ids": e.input_ids, "labels": e.labels} for e in mixed],
        "hp": {**hyperparameters(cfg), "max_length": max_length},
        "config": config,
        "overrides": [f"data.max_length={max_length}"],
        "lengths": [len(e.input_ids) for e in mixed],
    }
    path.write_text(json.dumps(spec))
    return spec


def run_contender(name: str, mode: str, spec: Path, a: argparse.Namespace, cap: float | None) -> dict:
    from retune import allocator

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env = allocator.preload_env(env) if name.startswith("retune") else {k: v for k, v in env.items() if k != "LD_PRELOAD"}
    cmd = [sys.executable, str(HERE / "tta_contenders.py"), name, mode, str(spec), "--eval-every", str(a.eval_every)]
    cmd += ["--targets", a.targets, "--steps", str(a.mixed_steps), "--warmup", str(a.mixed_warmup)]
    if cap is not None:
        cmd += ["--cap-seconds", f"{cap:.3f}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"contender": name, "error": " | ".join(proc.stderr.strip().splitlines()[-4:]), "process_seconds": wall}
    return {"contender": name, **json.loads(proc.stdout.strip().splitlines()[-1]), "process_seconds": wall}


def print_tta(rows: list[dict], table: dict[str, dict[str, Any]], cap: float | None) -> None:
    print(f"\ntime to accuracy (training seconds, evaluation excluded; cap for the others: {cap or 0:.0f} s)")
    for r in rows:
        if "error" in r:
            print(f"  {r['contender']:14} error: {r['error']}")
            continue
        evals = ", ".join(f"{h['step']}:{h['accuracy']:.3f}@{h['train_seconds']:.0f}s" for h in r["history"])
        print(f"  {r['contender']:14} {r['tokens_per_s']:6.0f} tok/s  peak {r['peak_rss_mb']:5.0f} MB  step:acc@s  {evals}")
    for target, entry in table.items():
        print(f"target {target}:")
        for name, e in entry.items():
            got = (
                f"{e['seconds']:7.1f} s (step {e['step']})" if e["seconds"] is not None else f"not reached in {e['trained_seconds']:.0f} s"
            )
            ratio = next((f"  {k}: {v:.2f}" for k, v in e.items() if k.startswith("ratio")), "")
            print(f"  {name:14} {got:28} best {e['best_accuracy']:.3f}{ratio}")


def print_mixed(rows: list[dict]) -> None:
    print("\nmixed-length set (debian-descriptions + python-code): tokens/s, peak RSS")
    ref = next((r for r in rows if r["contender"] == "trl-packing" and "tokens_per_s" in r), None)
    for r in rows:
        if "error" in r:
            print(f"  {r['contender']:14} error: {r['error']}")
            continue
        x = f"  {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x TRL tok/s, {r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x RSS" if ref else ""
        print(f"  {r['contender']:14} {r['tokens_per_s']:7.1f} tok/s  peak {r['peak_rss_mb']:6.0f} MB  {r['examples']} examples{x}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "quickstart.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE (as retune train --set)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--targets", default="0.85,0.84", help="held-out accuracies, highest first is where a contender stops")
    ap.add_argument("--eval-every", type=int, default=50, help="optimizer steps between evaluations")
    ap.add_argument("--cap-factor", type=float, default=2.0)
    ap.add_argument("--mixed-length", type=int, default=256)
    ap.add_argument("--mixed-steps", type=int, default=10)
    ap.add_argument("--mixed-warmup", type=int, default=2)
    ap.add_argument("--skip-tta", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {' '.join(QUICK)}, eval every 4 steps, 4 mixed steps")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args()
    if a.quick:
        a.sets, a.eval_every, a.mixed_steps, a.mixed_warmup = [*QUICK, *a.sets], 4, 4, 1
    names = a.contenders.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        ap.error(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    targets = [float(t) for t in a.targets.split(",")]
    out: dict[str, Any] = {"command": " ".join(sys.argv), "commit": commit(), "contenders": names, "targets": targets}
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_tta:
            spec = export_task(a.config, a.sets, Path(tmp) / "task.json")
            out |= {"hp": spec["hp"], "n_train": len(spec["train"]), "n_test": len(spec["test_prompts"]), "eval_every": a.eval_every}
            rows, cap = [], None
            for name in names:
                row = run_contender(name, "tta", Path(tmp) / "task.json", a, cap)
                rows.append(row)
                print(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'history'})}", flush=True)
                if cap is None and row.get("history"):
                    cap = cap_seconds(row["history"], targets, a.cap_factor)
            table = time_table(rows, targets)
            out |= {"tta": rows, "time_to_target": table, "cap_seconds": cap, "cap_factor": a.cap_factor}
            print_tta(rows, table, cap)
            write(a.json_path, out)
        if not a.skip_throughput:
            n = a.mixed_steps * 8 * 4  # TRL's packed steps take several examples per row
            mixed = export_mixed(a.config, a.mixed_length, n, Path(tmp) / "mixed.json")
            lengths = mixed["lengths"]
            out["mixed"] = {"max_length": a.mixed_length, "steps": a.mixed_steps, "warmup": a.mixed_warmup, "n_pool": len(lengths)}
            out["mixed"]["pool_lengths"] = {"mean": sum(lengths) / len(lengths), "min": min(lengths), "max": max(lengths)}
            rows = [run_contender(name, "throughput", Path(tmp) / "mixed.json", a, None) for name in names]
            out["mixed"]["rows"] = rows
            print_mixed(rows)
    write(a.json_path, out)


def write(path: str | None, out: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=2) + "\n")


def commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip()


if __name__ == "__main__":
    main()
