"""Scoring speed: retune's base and tuned scoring against plain transformers code on the same examples,
and where a quickstart run's wall time goes outside training.

    python benchmarks/scoring_speed.py --json benchmarks/results/scoring_speed.json
    python benchmarks/scoring_speed.py --n 64 --gen-n 8            # short
    python benchmarks/scoring_speed.py --run runs/quickstart-...   # tuned = that run's adapter; its phases

Label likelihood (the quickstart's scoring): the quickstart's first --n test prompts, both labels, fp32,
batch 16 (eval.batch_size), timed for
- retune: evaluate/scoring.label_loglik as `retune train` runs it (the head on the last position only;
  a batch's shared leading tokens run once as a key/value cache);
- retune without the shared start (shared_prefix.MIN_SHARED_PREFIX set out of reach): the path before it;
- plain: an fp32 model from AutoModelForCausalLM.from_pretrained, `model(ids, mask).logits` for each
  batch of 16 in the prompts' order, log-softmax at each row's last position (what a user writes).
Each on the base model and on the tuned one (base + LoRA r=16 on all linear layers: --run's adapter,
else a freshly initialised one, which costs the same). The predictions of the three are compared.

Generation with stop strings: the first --gen-n test prompts of debian-descriptions (one-line
summaries), greedy, --max-new-tokens, bf16 autocast: retune's scoring.generate (length-sorted
batches, stop=["\\n"]) against plain `model.generate` on batches of 16 in order, cut at the stop
string afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def outside_training(summary: dict, metrics: list[dict]) -> dict[str, float]:
    """Where a run's wall time went outside training, from its summary.json and metrics.jsonl: each
    task scoring (base, tuned), the in-training validations (the time from a step's train row to its
    validation row and the retention rows after it), and the rest (start, loading, saving, report)."""
    wall, train = summary["train"]["wall_seconds"], summary["train"]["train_seconds"]
    out = {"wall_seconds": wall, "train_seconds": train, "outside_seconds": wall - train}
    for r in metrics:
        if r.get("event") == "task_eval":
            key = "base_scoring_seconds" if r["stage"].startswith("base") else "tuned_scoring_seconds"
            out[key] = out.get(key, 0.0) + r["seconds"]
    validation = 0.0
    last_train: float | None = None
    for r in metrics:
        if "loss" in r and "step" in r and "event" not in r:
            last_train = r["time"]
        elif last_train is not None and "step" in r and "loss" not in r and "event" not in r:  # val_loss / forgetting rows
            validation += r["time"] - last_train
            last_train = r["time"]
    out["validation_seconds"] = validation
    named = sum(v for k, v in out.items() if k.endswith("scoring_seconds")) + validation
    out["other_seconds"] = out["outside_seconds"] - named
    out["outside_share"] = out["outside_seconds"] / wall
    return out


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def plain_loglik(model: Any, prompts: list[list[int]], label_tok: list[int], pad_id: int, batch: int) -> Any:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch):
            rows = prompts[s : s + batch]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(rows)), mask.sum(1) - 1].float().log_softmax(-1)
            out.append(last[:, label_tok])
    return torch.cat(out)


def likelihood_rows(
    cfg: Any, model_dir: str, tuned: Any, base: Any, prompts: list[list[int]], label_tok: list[int], pad: int
) -> list[dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring, shared_prefix

    label_ids = [[t] for t in label_tok]
    rows = []
    plain_base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for name, model in (("base", base), ("tuned", tuned)):
        plain = plain_base
        if name == "tuned":  # the same adapter weights on the plain model
            plain = get_peft_model(plain_base, LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, target_modules="all-linear"))
            plain.load_state_dict({k: v.float() for k, v in model.state_dict().items() if "lora_" in k}, strict=False)
            plain.eval()
        new, t_new = timed(lambda m=model: scoring.label_loglik(m, prompts, label_ids, pad, 16, contextlib.nullcontext))
        keep = shared_prefix.MIN_SHARED_PREFIX
        shared_prefix.MIN_SHARED_PREFIX = 10**9
        try:
            old, t_old = timed(lambda m=model: scoring.label_loglik(m, prompts, label_ids, pad, 16, contextlib.nullcontext))
        finally:
            shared_prefix.MIN_SHARED_PREFIX = keep
        ref, t_plain = timed(lambda p=plain: plain_loglik(p, prompts, label_tok, pad, 16))
        rows.append(
            {
                "model": name,
                "n": len(prompts),
                "retune_s": t_new,
                "retune_unshared_s": t_old,
                "plain_s": t_plain,
                "plain_over_retune": t_plain / t_new,
                "unshared_over_retune": t_old / t_new,
                "max_abs_diff_vs_unshared": float((new - old).abs().max()),
                "max_abs_diff_vs_plain": float((new - ref).abs().max()),
                "predictions_differ_vs_unshared": int((new.argmax(1) != old.argmax(1)).sum()),
                "predictions_differ_vs_plain": int((new.argmax(1) != ref.argmax(1)).sum()),
                "smallest_margin": float((new[:, 0] - new[:, 1]).abs().min()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def generation_row(model: Any, plain: Any, tok: Any, prompts: list[str], max_new: int, stop: list[str]) -> dict:
    import torch

    from retune.evaluate import scoring

    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    ours, t_ours = timed(lambda: scoring.generate(model, tok, prompts, max_new, 16, autocast, stop=stop))

    def plain_generate() -> list[str]:
        out: list[str] = []
        tok.padding_side = "left"
        with torch.no_grad(), autocast():
            for s in range(0, len(prompts), 16):
                enc = tok(prompts[s : s + 16], return_tensors="pt", padding=True, add_special_tokens=False)
                ids = plain.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
                texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                out += [scoring.cut_at_stop(t, stop).strip() for t in texts]
        tok.padding_side = "right"
        return out

    theirs, t_plain = timed(plain_generate)
    row = {"n": len(prompts), "max_new_tokens": max_new, "stop": stop, "retune_s": t_ours, "plain_s": t_plain}
    row |= {"plain_over_retune": t_plain / t_ours, "same_text": sum(a == b for a, b in zip(ours, theirs, strict=True))}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "quickstart.yaml"))
    ap.add_argument("--n", type=int, default=600, help="test prompts scored by label likelihood")
    ap.add_argument("--gen-n", type=int, default=48, help="prompts generated for")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--run", help="a finished quickstart run: its adapter is the tuned model, its logs give the phases")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from retune.config import load_config
    from retune.evaluate.task_eval import _resp_ids
    from retune.models.load import load_base, load_tokenizer, prepare_for_training
    from retune.models.resolve import resolve_base
    from retune.session import setup_torch
    from retune.session.prepare import prepare_data

    cfg = load_config(a.config, [f"data.max_eval_samples={a.n}"])
    setup_torch(cfg)
    model_dir = resolve_base(cfg.model.base)
    tok = load_tokenizer(model_dir, cfg.model)
    prep = prepare_data(cfg, tok)
    task = prep.tasks[0]
    prompts = [prep.fmt.prompt_ids(prep.fmt.record_prompt(task.template, r)[0]) for r in task.test]
    label_tok = [_resp_ids(prep.fmt, label)[0] for label in task.labels or []]
    base = load_base(cfg, model_dir)
    if a.run:
        from retune.models.load import load_trained

        tuned = load_trained(Path(a.run), cfg)
    else:  # a fresh adapter with random B (zero B would score as the base): the same cost as a trained one
        tuned = prepare_for_training(load_base(cfg, model_dir), cfg, bf16_autocast=True)
        torch.manual_seed(0)
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    out: dict[str, Any] = {"likelihood": likelihood_rows(cfg, model_dir, tuned, base, prompts, label_tok, tok.pad_token_id)}

    gen_cfg = load_config(a.config, ["data.train=debian-descriptions", f"data.max_eval_samples={a.gen_n}", "data.max_train_samples=8"])
    gen_prep = prepare_data(gen_cfg, tok)
    gen_task = gen_prep.tasks[0]
    texts = [gen_prep.fmt.record_prompt(gen_task.template, r)[0] for r in gen_task.test]
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # transformers 5: bf16, as stored
    out["generation"] = generation_row(base, plain, tok, texts, a.max_new_tokens, ["\n"])
    if a.run:
        summary = json.loads((Path(a.run) / "summary.json").read_text())
        metrics = [json.loads(line) for line in (Path(a.run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out["run"] = {"path": a.run, "commit": summary.get("environment", {}).get("retune_commit"), **outside_training(summary, metrics)}
        print(json.dumps(out["run"]))
    print_table(out)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(out, indent=2) + "\n")


def print_table(out: dict) -> None:
    print("\nlabel likelihood, fp32, batch 16 (seconds; x = plain / retune)")
    for r in out["likelihood"]:
        print(
            f"  {r['model']:6} n={r['n']}  retune {r['retune_s']:6.1f}  retune unshared {r['retune_unshared_s']:6.1f}  "
            f"plain {r['plain_s']:6.1f}  {r['plain_over_retune']:.2f}x  predictions differ: {r['predictions_differ_vs_plain']} vs plain"
        )
    g = out["generation"]
    times = f"retune {g['retune_s']:.1f} s, plain {g['plain_s']:.1f} s: {g['plain_over_retune']:.2f}x"
    print(f"generation n={g['n']}, up to {g['max_new_tokens']} tokens: {times}, same text {g['same_text']}")


if __name__ == "__main__":
    main()
