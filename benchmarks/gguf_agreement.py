"""Does a run's GGUF export classify like the run? `retune predict` (transformers, fp32 label likelihoods) vs
llama.cpp (llama-cpp-python, one thread) scoring the same labels on the same prompts from the exported GGUF.

    python benchmarks/gguf_agreement.py RUN RUN/gguf/<run>-q8_0.gguf [-n 100] [--json out.json]

The first n held-out test records of the run's task; each label is scored as retune scores it: the summed
log-probability of the label's tokens after the prompt. Prints the agreement and the timings of both sides.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def llama_labels(gguf: Path, prompts: list[list[int]], labels: list[list[int]]) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=1, logits_all=True, verbose=False)
    out = []
    for ids in prompts:
        scores = []
        for lab in labels:
            llm.reset()
            llm.eval(ids + lab)
            logits = llm.scores[len(ids) - 1 : len(ids) - 1 + len(lab)].astype(np.float64)
            logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            scores.append(sum(logp[i, t] for i, t in enumerate(lab)))
        out.append(int(np.argmax(scores)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("gguf")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--json")
    a = ap.parse_args()

    from retune.config import load_config
    from retune.data.dataset import load_task
    from retune.data.templates import Formatter
    from retune.inference.tuned import predict
    from retune.models.load import load_tokenizer

    cfg = load_config(Path(a.run) / "config.yaml")
    task = load_task(cfg.data, cfg.eval)
    records = task.test[: a.n]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        t0 = time.perf_counter()
        ours = [r["prediction"] for r in predict(a.run, str(path), None)]
        t_retune = time.perf_counter() - t0
    tok = load_tokenizer(str(Path(a.run) / "tokenizer"), cfg.model)
    fmt = Formatter(tok, cfg.data)
    prompts = [fmt.prompt_ids(fmt.record_prompt(task.template, r)[0]) for r in records]
    labels = [tok(label, add_special_tokens=False).input_ids for label in task.labels]  # as task_eval._resp_ids
    t0 = time.perf_counter()
    theirs = [task.labels[i] for i in llama_labels(Path(a.gguf), prompts, labels)]
    t_llama = time.perf_counter() - t0
    same = sum(x == y for x, y in zip(ours, theirs, strict=True))
    result = {"n": len(records), "agree": same, "retune_predict_s": round(t_retune, 1), "llama_cpp_s": round(t_llama, 1), "gguf": a.gguf}
    print(json.dumps(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
