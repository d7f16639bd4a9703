"""Load-test a running `retune serve` on loopback: N concurrent clients for a bounded time.

    retune serve --adapter sentiment=RUN_DIR &                       # in another shell
    python benchmarks/serve_load.py --concurrency 64 --duration 30 --json results/serve_load.json

Each client sends chat completions back to back until the time is up (requests in flight then finish,
bounded by --timeout). --malformed K also sends K malformed requests (bad JSON, unknown model, empty
messages, max_tokens too large, ...) during the load; each must get a 4xx. Prints throughput,
p50/p95 latency of the successful requests, and counts by status.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import time
from urllib.parse import urlparse

import httpx

MALFORMED = [
    b'{"model": "MODEL", "messages": [',
    b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "MODEL", "messages": []}',
    b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000}',
    b'{"model": "MODEL", "messages": [{"role": "robot", "content": "hi"}]}',
    b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}',
    b'"just a string"',
]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][-1]["id"]
        body = {"model": model, "max_tokens": args.max_tokens, "temperature": 0}
        stats = {"requests": 0, "ok": 0, "status_4xx": 0, "status_5xx": 0, "errors": 0, "completion_tokens": 0}
        latencies: list[float] = []
        malformed_4xx = 0
        end = time.monotonic() + args.duration

        async def one(i: int) -> None:
            msg = [{"role": "user", "content": f"Review: film number {i} was {('great', 'dull')[i % 2]}\nSentiment?"}]
            t = time.perf_counter()
            stats["requests"] += 1
            try:
                r = await client.post("/v1/chat/completions", json={**body, "messages": msg})
            except httpx.HTTPError:
                stats["errors"] += 1
                return
            if r.status_code == 200:
                stats["ok"] += 1
                latencies.append(1000 * (time.perf_counter() - t))
                stats["completion_tokens"] += r.json()["usage"]["completion_tokens"]
            elif 400 <= r.status_code < 500:
                stats["status_4xx"] += 1
            else:
                stats["status_5xx"] += 1

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < end:
                await one(i)
                i += args.concurrency

        async def bad(k: int) -> None:
            nonlocal malformed_4xx
            await asyncio.sleep(args.duration * k / max(args.malformed, 1) / 2)
            payload = MALFORMED[k % len(MALFORMED)].replace(b"MODEL", model.encode())
            r = await client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
            malformed_4xx += 400 <= r.status_code < 500

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(args.concurrency)), *(bad(k) for k in range(args.malformed)))
        wall = time.perf_counter() - t0
    return {
        **stats,
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "requests_per_s": stats["ok"] / wall,
        "completion_tokens_per_s": stats["completion_tokens"] / wall,
        "wall_s": wall,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "model": model,
        "malformed_sent": args.malformed,
        "malformed_4xx": malformed_4xx,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default=None, help="default: the last model /v1/models lists (an adapter if any)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds during which new requests are sent")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--malformed", type=int, default=0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    host = urlparse(args.url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        ap.error("this load test only targets loopback (127.0.0.1 / localhost)")
    res = asyncio.run(run(args))
    print(
        f"{res['requests']} requests ({res['concurrency']} concurrent, {res['wall_s']:.1f} s): ok {res['ok']}, "
        f"4xx {res['status_4xx']}, 5xx {res['status_5xx']}, connection errors {res['errors']}"
    )
    print(f"throughput {res['requests_per_s']:.2f} req/s, {res['completion_tokens_per_s']:.1f} tokens/s")
    print(f"latency p50 {res['p50_ms']:.0f} ms, p95 {res['p95_ms']:.0f} ms")
    if args.malformed:
        print(f"malformed requests answered 4xx: {res['malformed_4xx']} of {res['malformed_sent']}")
    if args.json:
        import pathlib

        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
