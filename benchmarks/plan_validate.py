"""`retune plan` against measured peak RSS: short real trainings, predicted vs measured.

    flock /tmp/retune-cpu.lock .venv/bin/python benchmarks/plan_validate.py --json benchmarks/results/plan_validate.json
    .venv/bin/python benchmarks/plan_validate.py --only smol-lora-b8      # one configuration
    # whole runs: each example config end to end through `retune train`, plan vs measured by phase
    flock /tmp/retune-cpu.lock .venv/bin/python benchmarks/plan_validate.py --examples examples/quickstart.yaml \
        examples/multitask.yaml --json benchmarks/results/plan_examples.json [--set KEY=VALUE ...]

Each configuration runs `retune.cli.run_train` (what `retune train` runs: base scoring, training,
tuned scoring, saving) in its own process for --steps optimizer steps. The child resets the
kernel's peak-RSS counter (/proc/self/clear_refs) at each phase boundary, so it reports the peak of
every phase (imports, data, load, base eval, training, tuned eval, save); the run's peak is their
maximum (the same quantity as summary.json's peak_memory_mb, ru_maxrss, which it also reports).

Data: a synthetic yes/no task whose prompts are long enough to be cut to data.max_length, so every
example has exactly max_length tokens (the shapes are known); plus the quickstart's rotten-tomatoes
run as it ships. The ~350M Llama (hidden 1024, 24 layers, 16 heads, intermediate 2816, vocab 49152,
untied head) is randomly initialised, saved in bf16 with the SmolLM2 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from retune import allocator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMOL = "smollm2-135m-instruct"

COMMON = ["trainer.max_steps=2", "data.max_eval_samples=8", "trainer.log_every=1", "adapter.target_modules=all-linear"]


def configs(data: str, llama: str) -> dict[str, tuple[str | None, list[str]]]:
    """name -> (config file or None, overrides)."""
    syn = [
        f"data.train={data}",
        "data.labels=['yes', 'no']",
        "data.template={prompt: '{prompt}', response: '{response}'}",
        "data.max_train_samples=64",
    ]
    out: dict[str, tuple[str | None, list[str]]] = {
        "quickstart-lora": ("examples/quickstart.yaml", ["trainer.max_steps=2", "data.max_eval_samples=8"]),
    }
    for base, tag in ((SMOL, "smol"), (llama, "llama350m")):
        b = [f"model.base={base}", *syn, *COMMON]
        big = tag == "smol"
        out[f"{tag}-full-b{8 if big else 4}"] = (
            None,
            [*b, "adapter.type=full", f"trainer.batch_size={8 if big else 4}", "data.max_length=256"],
        )
        out[f"{tag}-lora-b8"] = (None, [*b, "adapter.type=lora", "trainer.batch_size=8", "data.max_length=256"])
        out[f"{tag}-qlora-b8"] = (None, [*b, "adapter.type=qlora", "trainer.batch_size=8", "data.max_length=256"])
    s = [f"model.base={SMOL}", *syn, *COMMON]
    out["smol-lora-b4-t512-prompt"] = (
        None,
        [*s, "adapter.type=lora", "trainer.batch_size=4", "data.max_length=512", "data.train_on_prompt=true"],
    )
    out["smol-lora-b8-nocompile"] = (
        None,
        [*s, "adapter.type=lora", "trainer.batch_size=8", "data.max_length=256", "trainer.compile=false"],
    )
    out["smol-full-b8-ckpt"] = (
        None,
        [*s, "adapter.type=full", "trainer.batch_size=8", "data.max_length=256", "trainer.gradient_checkpointing=true"],
    )
    return out


def make_data(folder: Path, n: int = 96) -> Path:
    """Yes/no questions after a long passage: prompts are cut from the left to data.max_length."""
    rng = random.Random(0)
    words = "the a model data memory layer token batch weight gradient value system river city music light".split()
    path = folder / "long.jsonl"
    with path.open("w") as f:
        for _ in range(n):
            passage = " ".join(rng.choice(words) for _ in range(900))
            f.write(json.dumps({"prompt": passage + "\nIs this text about memory?", "response": rng.choice(["yes", "no"])}) + "\n")
    return path


def make_llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from retune.models.builtin import builtin_model_dir

    cfg = LlamaConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        intermediate_size=2816,
        vocab_size=49152,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    src = builtin_model_dir(SMOL)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / f, folder / f)
    return folder


# ---------------------------------------------------------------- child: one measured run


def _status() -> tuple[float, float]:
    s = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", s).group(1)) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def child(config: str, overrides: list[str], outdir: str) -> dict:
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = max(phases.get(name, 0.0), _status()[1])
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS

    import torch  # noqa: F401  (the runtime: what every retune process pays)
    import transformers  # noqa: F401

    import retune.session as session
    from retune.cli import run_train

    mark("imports")

    def wrap(owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def inner(*a, **k):
            mark(f"before {label}")
            try:
                return fn(*a, **k)
            finally:
                mark(label)

        setattr(owner, name, inner)

    for owner, name, label in [
        (session, "prepare_data", "data"),
        (session, "load_base", "load"),
        (session.Session, "score", "eval"),
        (session, "prepare_for_training", "adapter"),
        (session, "fit", "train"),
        (session.Session, "save_model", "save"),
    ]:
        wrap(owner, name, label)
    _, summary = run_train(config, [*overrides, f"output.dir={outdir}", "eval.before=true"])
    mark("end")
    peak = summary["train"]["peak_memory_mb"]
    return {"phases_mb": phases, "peak_mb": max(phases.values()), "summary_peak_mb": peak, "allocator": summary["train"]["allocator"]}


# ---------------------------------------------------------------- whole runs (--examples)


def run_example(config: str, overrides: list[str], out: Path, env: dict[str, str]) -> dict:
    """`retune train CONFIG` as a user runs it (its own process, its allocator), VmRSS sampled every
    0.1 s from outside; the run's summary.json has the plan and the per-phase peaks (VmHWM). The base
    model is scored (eval.base_cache=false): the plan's phases, whatever earlier runs stored."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*/summary.json"))
    sets = [*overrides, f"output.dir={out}", "eval.base_cache=false"]
    cmd = [str(ROOT / ".venv/bin/retune"), "train", config, *[f"--set={o}" for o in sets]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sampled = 0.0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            sampled = max(sampled, int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            pass
        time.sleep(0.1)
    err = proc.stderr.read() if proc.stderr else ""
    new = sorted(set(out.glob("*/summary.json")) - before, key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not new:
        raise RuntimeError(f"{config}: exit {proc.returncode}\n{err[-2000:]}")
    summary = json.loads(new[-1].read_text())
    plan, train = summary.get("plan") or {}, summary["train"]
    measured = max(sampled, train["peak_memory_mb"])
    phases = train.get("phase_peaks_mb", {})
    row = {"config": config, "overrides": overrides, "predicted_mb": plan.get("predicted_mb"), "measured_mb": round(measured)}
    row |= {"summary_peak_mb": round(train["peak_memory_mb"]), "sampled_peak_mb": round(sampled), "allocator": train.get("allocator")}
    row |= {"plan_phase": plan.get("phase"), "measured_phase": max(phases, key=phases.get) if phases else None}
    row |= {"plan_phases_mb": plan.get("phases_mb"), "measured_phases_mb": phases, "wall_seconds": round(train["wall_seconds"])}
    row |= {"phase_seconds": train.get("phase_seconds", {})}
    if row["predicted_mb"]:
        row["error_pct"] = round(100 * (row["predicted_mb"] - measured) / measured, 1)
    return row


def examples(paths: list[str], overrides: list[str], work: Path, out_json: str | None) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    table = []
    for config in paths:
        row = run_example(config, overrides, work / "example-runs", env)
        table.append(row)
        pred = f"predicted {row['predicted_mb'] or 0:6.0f} MB ({row['plan_phase']})"
        got = f"measured {row['measured_mb']:6.0f} MB ({row['measured_phase']})"
        print(f"{Path(config).name:22} {pred}  {got}  error {row.get('error_pct', float('nan')):+6.1f}%", flush=True)
        for name, mb in row["measured_phases_mb"].items():
            secs = row["phase_seconds"].get(name, float("nan"))
            print(f"    {name:16} measured {mb:7.0f}  plan {(row['plan_phases_mb'] or {}).get(name, float('nan')):7.0f}  {secs:7.1f} s")
        if out_json:
            Path(out_json).write_text(json.dumps(table, indent=2) + "\n")


# ---------------------------------------------------------------- parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--rescore", help="recompute the predictions for the measurements in this JSON (no runs; --examples JSONs too)")
    ap.add_argument("--examples", nargs="*", help="whole runs: these configs through `retune train`, plan vs measured by phase")
    ap.add_argument("--set", action="append", default=[], help="--examples: an override for every config (a reduced size)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help="folder for the synthetic data, the 350M model and runs (default: a temp dir)")
    args, rest = ap.parse_known_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, rest[1:] if rest[:1] == ["--"] else rest, os.environ["PLAN_OUT"])))
        return

    if args.examples:
        examples(args.examples, args.set, Path(args.work or "/tmp/plan-validate"), args.json)
        return
    from retune.config import load_config
    from retune.plan import estimate

    def report(row: dict) -> dict:
        plan = estimate(load_config(row["config"], row["overrides"]))
        err = 100 * (plan.peak_mb - row["measured_mb"]) / row["measured_mb"]
        row |= {"predicted_mb": round(plan.peak_mb, 1), "error_pct": round(err, 1)}
        if "measured_phases_mb" in row:  # a whole run (--examples): the plan by phase beside the run's own
            row |= {"plan_phase": plan.phase, "plan_phases_mb": {k: round(v, 1) for k, v in plan.phases.items()}}
        else:
            row["plan"] = plan.to_dict()
        pred, got, name = plan.peak_mb, row["measured_mb"], row.get("name") or Path(row["config"]).name
        print(f"{name:28} predicted {pred:6.0f} MB  measured {got:6.0f} MB  error {err:+6.1f}%  (peak: {plan.phase})", flush=True)
        return row

    if args.rescore:
        table = [report(row) for row in json.loads(Path(args.rescore).read_text())]
        if args.json:
            Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
        return
    work = Path(args.work or "/tmp/plan-validate")
    work.mkdir(parents=True, exist_ok=True)
    data = work / "long.jsonl" if (work / "long.jsonl").exists() else make_data(work)
    llama = work / "llama350m"
    if not (llama / "config.json").exists():
        make_llama(llama)
    table = []
    # each child runs on the malloc `retune train` would (retune/allocator.py): the allocator's slack is
    # part of what the planner predicts
    env = allocator.preload_env({**os.environ, "PLAN_OUT": str(work / "runs"), "HF_HUB_OFFLINE": "1"})
    blank = work / "plan.yaml"  # the recipe wants a config file: the synthetic runs are all overrides
    blank.write_text("output:\n  name: plan\n")
    for name, (config, overrides) in configs(str(data), str(llama)).items():
        if args.only and name not in args.only:
            continue
        config = config or str(blank)
        cmd = [sys.executable, __file__, "--child", config, "--", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        got = json.loads(line[7:])
        row = {"name": name, "config": config, "overrides": overrides, "measured_mb": round(got["peak_mb"])}
        row |= {"summary_peak_mb": round(got["summary_peak_mb"]), "phases_mb": {k: round(v) for k, v in got["phases_mb"].items()}}
        row["allocator"] = got["allocator"]
        table.append(report(row))
        if args.json:  # after every run: a long sweep keeps what it measured
            Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
