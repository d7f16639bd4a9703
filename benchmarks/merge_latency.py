"""Per-token generation latency: base vs merged vs unmerged (base + LoRA), measured side by side in one process.

    python benchmarks/merge_latency.py RUN_DIR [--merged DIR] [--tokens 64] [--repeats 7] [--json PATH]

The merged checkpoint (RUN/merged unless --merged; made with `retune merge RUN` when missing) is
loaded with plain transformers in the same dtype as the base. Each repeat times every model in turn
(rotating the order), so drift in machine load hits all three alike. Decode latency per token is
(t(N tokens) - t(1 token)) / (N - 1): the prompt's prefill is left out. Greedy, batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

PROMPT = "Review: a moving, funny and beautifully acted film about growing up.\nSentiment?"
# greedy text until EOS (at most 48 tokens): the task's own prompts and a few open-ended ones
CHECK_PROMPTS = [
    PROMPT,
    "Review: the plot drags and the jokes fall flat.\nSentiment?",
    "Review: an uneven but often charming debut.\nSentiment?",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "Explain in one sentence what a neural network is.",
]


def timed_generate(model, enc, n: int, pad: int) -> tuple[float, list[int]]:
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
    return time.perf_counter() - t, out[0, enc["input_ids"].shape[1] :].tolist()


def greedy_text(model, tok, fmt, prompt: str, pad: int) -> str:
    enc = tok(fmt.prompt_text(prompt), return_tensors="pt", add_special_tokens=not fmt.chat)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False, pad_token_id=pad)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--merged", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", choices=["auto", "fp32"], default="auto", help="auto: as served (bf16 on fast-bf16 CPUs); fp32: all in fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from retune.data.templates import Formatter
    from retune.models.load import load_base
    from retune.models.merge import merge_run
    from retune.session import load_run

    run = Path(args.run)
    merged_dir = Path(args.merged) if args.merged else run / ("merged" if args.dtype == "auto" else "merged-fp32")
    if not (merged_dir / "config.json").exists():
        merge_run(run, merged_dir, args.dtype)
    cfg, unmerged, tok = load_run(run, ["model.dtype=fp32", "trainer.precision=fp32"] if args.dtype == "fp32" else None)
    base = load_base(cfg)
    dtype = base.dtype
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype)
    models = {"base": base, "merged": merged, "unmerged (base + LoRA)": unmerged}
    for m in models.values():
        m.eval()
    fmt = Formatter(tok, cfg.data)
    enc = tok(fmt.prompt_text(PROMPT), return_tensors="pt", add_special_tokens=not fmt.chat)
    pad = tok.pad_token_id
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()

    names = list(models)
    per_token: dict[str, list[float]] = {n: [] for n in names}
    texts: dict[str, list[int]] = {}
    with ctx:
        for name in names:  # warm-up
            timed_generate(models[name], enc, 4, pad)
        for r in range(args.repeats):
            for name in names[r % 3 :] + names[: r % 3]:
                t_n, ids = timed_generate(models[name], enc, args.tokens, pad)
                t_1, _ = timed_generate(models[name], enc, 1, pad)
                per_token[name].append(1000 * (t_n - t_1) / (args.tokens - 1))
                texts[name] = ids

    med = {n: statistics.median(v) for n, v in per_token.items()}
    rows = []
    dt = str(dtype).removeprefix("torch.")
    print(f"per-token decode latency, {args.tokens} tokens, median of {args.repeats}, dtype {dt}, {torch.get_num_threads()} threads")
    print(f"{'model':24} {'ms/token':>9} {'vs base':>8} {'min':>7} {'max':>7}")
    for n in names:
        rows.append({"model": n, "ms_per_token": med[n], "vs_base": med[n] / med["base"], "all_ms": per_token[n]})
        print(f"{n:24} {med[n]:9.2f} {med[n] / med['base']:7.3f}x {min(per_token[n]):7.2f} {max(per_token[n]):7.2f}")
    same_forced = texts["merged"] == texts["unmerged (base + LoRA)"]
    with ctx:
        greedy = {n: [greedy_text(models[n], tok, fmt, p, pad) for p in CHECK_PROMPTS] for n in ("merged", "unmerged (base + LoRA)")}
    equal = sum(a == b for a, b in zip(greedy["merged"], greedy["unmerged (base + LoRA)"], strict=True))
    same = equal == len(CHECK_PROMPTS)
    print(f"greedy text until EOS (<= 48 tokens), merged == unmerged: {equal} of {len(CHECK_PROMPTS)} prompts")
    for p, a, b in zip(CHECK_PROMPTS, greedy["merged"], greedy["unmerged (base + LoRA)"], strict=True):
        if a != b:
            print(f"  differs on {p!r}:\n    merged:   {a!r}\n    unmerged: {b!r}")
    print(f"forced {args.tokens} tokens (EOS suppressed) identical: {same_forced}")
    if args.json:
        from retune.io import write_json

        write_json(
            args.json,
            {
                "run": str(run),
                "merged": str(merged_dir),
                "tokens": args.tokens,
                "repeats": args.repeats,
                "dtype": str(dtype),
                "threads": torch.get_num_threads(),
                "rows": rows,
                "merged_over_base": med["merged"] / med["base"],
                "unmerged_over_base": med["unmerged (base + LoRA)"] / med["base"],
                "merged_greedy_equals_unmerged": same,
                "greedy_prompts_equal": equal,
                "greedy_prompts": len(CHECK_PROMPTS),
                "greedy_texts": greedy,
                "forced_tokens_identical": same_forced,
            },
        )


if __name__ == "__main__":
    main()
