"""Tokens/s of `retune serve` on one model two ways: the GGUF export through llama.cpp (--gguf) vs the merged
checkpoint through torch (--base), same prompts, same machine, one server at a time.

    retune export RUN --gguf q8_0 -o q8.gguf && retune merge RUN -o merged --dtype bf16
    flock /tmp/retune-cpu.lock python benchmarks/serve_gguf.py --gguf q8.gguf --merged merged --json results/serve_gguf.json

Each server is started as `retune serve` on loopback, answers one warm-up request, then the prompts (greedy,
--max-tokens each, --concurrency at a time); tokens/s = completion tokens / wall time of that phase.
Two prompt sets: the quickstart task (a review, answered in a word or two: prompt-bound) and open questions
(answered at length: decode-bound). Also counts the prompts whose two answers are the same text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = {
    "review": [
        f"Review: {t}\nSentiment?"
        for t in (
            "A truly great film, the best I have seen this year.",
            "Dull, slow and far too long; I nearly left.",
            "The actors do what they can with a weak script.",
            "Superb ending, and the music is wonderful.",
            "I would not watch it again, but my kids loved it.",
            "A boring movie with a plot full of holes.",
            "Charming, funny and beautifully shot.",
            "The worst sequel in a series of bad sequels.",
        )
    ],
    "open": [
        "Write a short story about a cat who learns to cook.",
        "Explain how a bicycle stays upright.",
        "List five ideas for a rainy weekend.",
        "Describe the city of Paris to someone who has never been there.",
        "What makes a good film review? Explain in detail.",
        "Write a letter to a friend about your holiday.",
        "Explain photosynthesis to a child.",
        "Give advice to someone starting to learn the piano.",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _phase(client: httpx.AsyncClient, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def one(p: str) -> tuple[str, int]:
        async with gate:
            body = {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens, "temperature": 0}
            r = (await client.post("/v1/chat/completions", json=body)).raise_for_status().json()
            return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    tokens = sum(n for _, n in results)
    return {"texts": [t for t, _ in results], "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def measure(label: str, serve_args: list[str], args: argparse.Namespace) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "retune.cli", "serve", *serve_args, "--port", str(port), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                sys.exit(f"{label}: retune serve exited: {proc.stderr.read().strip() if proc.stderr else ''}")
            try:
                model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        out: dict = {"label": label, "command": " ".join(cmd[2:]), "start_s": time.perf_counter() - t0}

        async def run_all() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                await _phase(client, model, PROMPTS["review"][:1], args.max_tokens, 1)  # warm-up
                for name, prompts in PROMPTS.items():
                    out[name] = await _phase(client, model, prompts, args.max_tokens, args.concurrency)

        asyncio.run(run_all())
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True, help="the GGUF export (retune export RUN --gguf q8_0)")
    ap.add_argument("--merged", required=True, help="the merged checkpoint folder (retune merge RUN --dtype bf16)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gguf = measure("gguf", ["--gguf", args.gguf], args)
    torch_ = measure("merged", ["--base", args.merged], args)
    print(f"{args.max_tokens} max tokens, concurrency {args.concurrency}, {args.threads} threads, greedy")
    for name, prompts in PROMPTS.items():
        g, t = gguf[name], torch_[name]
        same = sum(a == b for a, b in zip(g["texts"], t["texts"], strict=True))
        rate = lambda r: f"{r['tokens_per_s']:.1f} tokens/s ({r['completion_tokens']} in {r['wall_s']:.1f} s)"  # noqa: E731
        print(
            f"{name:6s} ({len(prompts)} prompts): llama.cpp GGUF {rate(g)}, torch merged {rate(t)}, "
            f"ratio {g['tokens_per_s'] / t['tokens_per_s']:.2f}x; same answer on {same}/{len(prompts)}"
        )
    print(f"start-up to first /v1/models: llama.cpp {gguf['start_s']:.1f} s, torch {torch_['start_s']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "gguf": gguf, "merged": torch_}, indent=2) + "\n")


if __name__ == "__main__":
    main()
