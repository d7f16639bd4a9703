"""Greedy text of a GGUF export in llama.cpp vs `retune generate` on the same prompts (the run's chat format).

    python benchmarks/gguf_greedy.py RUN MODEL.gguf [--lora ADAPTER.gguf] [-n 64]

Prints, per prompt, whether the texts are identical, and the count.
"""

from __future__ import annotations

import argparse

import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that adds two numbers.",
    "Classify the sentiment of the following movie review as positive or negative.\n\nA dull, lifeless script.",
    "Give me three tips for sleeping well.",
    "What is 12 times 7?",
    "Describe a cat in one sentence.",
]


def greedy(llm, ids: list[int], n: int) -> list[int]:
    import llama_cpp

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t):
            break
        out.append(t)
        llm.eval([t])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("gguf")
    ap.add_argument("--lora")
    ap.add_argument("-n", type=int, default=64)
    a = ap.parse_args()
    import llama_cpp

    from retune.data.templates import Formatter
    from retune.inference.tuned import generate_text, load_target

    cfg, _, tok = load_target(a.run)
    fmt = Formatter(tok, cfg.data)
    kw = {"lora_path": a.lora} if a.lora else {}
    llm = llama_cpp.Llama(a.gguf, n_ctx=512, n_threads=1, logits_all=True, verbose=False, **kw)
    same = 0
    for p in PROMPTS:
        ids = tok(fmt.prompt_text(p), add_special_tokens=not fmt.chat)["input_ids"]
        ours = tok.decode(greedy(llm, ids, a.n), skip_special_tokens=True).strip()
        ref = generate_text(a.run, p, a.n)
        same += ours == ref
        print(f"{'same' if ours == ref else 'DIFF'}  {p[:40]!r}: llama.cpp {ours[:60]!r} | retune {ref[:60]!r}")
    print(f"identical greedy text on {same}/{len(PROMPTS)} prompts")


if __name__ == "__main__":
    main()
