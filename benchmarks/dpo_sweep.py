"""Choosing examples/sft-then-dpo.yaml's DPO stage on validation data, without re-training SFT per trial.

    python benchmarks/dpo_sweep.py prepare                 # SFT once, its samples, its validation score
    python benchmarks/dpo_sweep.py trial beta=0.1,lr=2e-4,steps=12,prompts=96,samples=4 beta=0.3,steps=30 \
        --out benchmarks/results/dpo_sweep.jsonl      # one argument per trial; unset keys: the example at 3ffdd5a

`prepare` runs the example's SFT stage (same config, seed and code path as `retune train`), saves its
trainable weights, samples SAMPLES answers per training prompt from it (temperature 1, the stage's
sampling path) and scores them by ROUGE-L against the references, and scores the SFT model on the
validation split (records the DPO stage never trains on; the test split is not read). Each `trial`
restores the SFT weights, makes pairs: self from the first `samples` draws of the first `prompts`
prompts (best vs worst, ties dropped: the stage's rule), trains the DPO stage through the session's
fit (the stage's loss, optimizer and schedule) and scores validation again: the paired ROUGE-L
change over SFT with its bootstrap 95% interval, one JSON line per trial.

Run it under the CPU lock (flock /tmp/retune-cpu.lock ...). The cache lives in --work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from retune.config import load_config
from retune.evaluate.intervals import paired_bootstrap
from retune.evaluate.metrics import per_example, per_example_scores
from retune.evaluate.scoring import generate
from retune.evaluate.task_eval import predict
from retune.objectives import objective_for
from retune.objectives.pairs import Pair, PairText, encode_pair, reference_logps
from retune.recipes.stages import stage_tasks
from retune.session import Session
from retune.train.checkpoint import load_trainable, trainable_state

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sft-then-dpo.yaml"
CURVE = ("step", "loss", "reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")
KEYS = {"beta": float, "lr": float, "steps": int, "prompts": int, "samples": int, "loss_type": str, "label_smoothing": float}


def session(work: Path, prompts: int, val_n: int) -> tuple[Session, Any, Any]:
    """The example's session with the test split swapped for validation and nothing retained."""
    val = f"{{path: debian-descriptions, split: validation, limit: {val_n}}}"
    cfg = load_config(
        EXAMPLE,
        [
            f"stages.0.task.test={val}",
            f"stages.1.task.test={val}",  # loaded, never scored: the test split stays unread
            f"stages.0.task.max_eval_samples={val_n}",
            f"stages.1.task.max_train_samples={prompts}",
            "retain.tasks=[]",
            "retain.probe=null",
            f"output.dir={work / 'runs'}",
        ],
    )
    s = Session.begin(cfg)
    objectives = [objective_for(st) for st in cfg.stages]
    prep = s.prepare(stage_tasks(cfg), objectives)
    model = s.load_model(labels=prep.tasks[0].labels)
    s.open_run()
    return s, s.attach(model), cfg


def validation_scores(s: Session, model: Any) -> list[float]:
    assert s.prep is not None
    task = s.prep.tasks[0]
    model.eval()
    pred = predict(model, s.tok, s.prep.fmt, task, task.test, s.cfg.eval, s.autocast)
    return per_example_scores(task.metric, pred.predictions, pred.references, records=task.test)[task.metric]


def prepare(work: Path, prompts: int, samples: int, val_n: int) -> None:
    t0 = time.perf_counter()
    s, model, cfg = session(work, prompts, val_n)
    assert s.prep is not None
    over = {"max_steps": cfg.stages[0].max_steps, "lr": cfg.stages[0].lr}
    model, _ = s.fit(model, s.prep.task_train[0], {}, work / "sft-ckpt", [], cfg.trainer.model_copy(update=over), stage=1, label="sft")
    save_file(trainable_state(model), str(work / "sft.safetensors"))
    sft_val = validation_scores(s, model)
    items = s.prep.task_train[1]  # pairs: self, pending: prompt + reference
    fmt, first = items[0].fmt, items[0]
    sources = [p.source for p in items]
    texts = generate(
        model,
        fmt.tok,
        [fmt.prompt_text(x.prompt, x.system, x.messages) for x in sources] * samples,
        first.max_new_tokens,
        cfg.eval.batch_size,
        s.autocast,
        add_special_tokens=not fmt.chat,
        stop=first.stop,
        temperature=cfg.stages[1].sample_temperature,
        top_p=cfg.eval.top_p,
    )
    scores = per_example(first.metric, texts, [x.chosen for x in sources] * samples)
    n = len(sources)
    draws = [[(scores[j * n + i], texts[j * n + i]) for j in range(samples)] for i in range(n)]  # (prompt, draw)
    cache = {"sources": [x.__dict__ for x in sources], "draws": draws, "sft_val": sft_val}
    (work / "cache.json").write_text(json.dumps(cache))
    mean = 100 * sum(sft_val) / len(sft_val)
    print(
        json.dumps({"prepared": True, "sft_val_rouge_l": round(mean, 2), "n_val": len(sft_val), "seconds": round(time.perf_counter() - t0)})
    )


def make_pairs(fmt: Any, cache: dict, prompts: int, k: int) -> tuple[list[Pair], int]:
    """pairs: self's rule (objectives/pairs.py sample_pairs) on the first k cached draws."""
    out = []
    for src, draws in list(zip(cache["sources"], cache["draws"], strict=True))[:prompts]:
        cands = sorted((sc, t) for sc, t in draws[:k] if t.strip())
        if len(cands) < 2 or cands[0][0] == cands[-1][0]:
            continue
        t = PairText(src["prompt"], src["system"], src["messages"], cands[-1][1], cands[0][1])
        out.append(encode_pair(fmt, t, "self-made pair"))
    return out, prompts - len(out)


def trials(work: Path, specs: list[dict[str, Any]], val_n: int, out: Path | None) -> None:
    """Each spec from the SFT weights, in one session (the model and data load once)."""
    cache = json.loads((work / "cache.json").read_text())
    s, model, cfg = session(work, len(cache["sources"]), val_n)
    assert s.prep is not None and s.run is not None
    for spec in specs:
        t0 = time.perf_counter()
        load_trainable(model, load_file(str(work / "sft.safetensors")))
        stage = cfg.stages[1].model_copy(update={k: spec[k] for k in ("beta", "loss_type", "label_smoothing") if k in spec})
        pairs, dropped = make_pairs(s.prep.fmt, cache, spec["prompts"], spec["samples"])
        reference_logps(model, pairs, s.tok.pad_token_id, cfg.eval.batch_size, s.autocast)  # the reference: SFT
        tcfg = cfg.trainer.model_copy(update={"max_steps": spec["steps"], "lr": spec["lr"]})
        seen = len(s.run.metrics_path.read_text().splitlines()) if s.run.metrics_path.exists() else 0
        torch.manual_seed(cfg.trainer.seed)
        ckpt = work / f"dpo-ckpt-{time.time_ns()}"
        model, _ = s.fit(model, list(pairs), {}, ckpt, [], tcfg, stage=2, label="dpo", objective=objective_for(stage))
        after = validation_scores(s, model)
        delta, low, high = paired_bootstrap(cache["sft_val"], after)
        rows = [json.loads(x) for x in s.run.metrics_path.read_text().splitlines()[seen:]]
        logged = [{k: round(r[k], 4) for k in CURVE if k in r} for r in rows if "reward_margin" in r]
        row = {
            **spec,
            "pairs": len(pairs),
            "dropped": dropped,
            "sft_val": round(100 * sum(cache["sft_val"]) / len(after), 2),
            "dpo_val": round(100 * sum(after) / len(after), 2),
            "change": [round(100 * delta, 2), round(100 * low, 2), round(100 * high, 2)],
            "n_val": len(after),
            "curve": logged,
            "seconds": round(time.perf_counter() - t0),
        }
        print(json.dumps(row), flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prepare", "trial"])
    ap.add_argument("specs", nargs="*", help="trial: one argument per trial, key=value,... (keys: " + ", ".join(KEYS) + ")")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpo-sweep"))
    ap.add_argument("--prompts", type=int, default=160, help="prepare: training prompts sampled")
    ap.add_argument("--samples", type=int, default=8, help="prepare: draws per prompt")
    ap.add_argument("--val", type=int, default=200, help="validation records scored")
    ap.add_argument("--out", type=Path, default=None, help="trial: append the JSON line here")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.what == "prepare":
        prepare(a.work, a.prompts, a.samples, a.val)
        return
    specs = []
    for arg in a.specs:
        spec: dict[str, Any] = {"beta": 0.1, "lr": 2e-4, "steps": 12, "prompts": 96, "samples": 4}  # the example at 3ffdd5a
        for item in arg.split(","):
            key, _, value = item.partition("=")
            spec[key] = KEYS[key](value)
        specs.append(spec)
    trials(a.work, specs, a.val, a.out)


if __name__ == "__main__":
    main()
