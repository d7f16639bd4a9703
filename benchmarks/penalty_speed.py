"""What the weight-anchored retention methods cost per optimizer step on SmolLM2-135M (full fine-tuning:
every one of its 134.5M parameters is trainable), side by side in one run:

    python benchmarks/penalty_speed.py --json benchmarks/results/penalty_speed.json

- penalty + backward: EWC's / SI's sum_i w_i (theta_i - a_i)^2 and L2-SP's sum_i (theta_i - a_i)^2, as
  retune computes them (retention/common.quadratic_penalty: multi-tensor forward and backward) and as
  autograd of the per-parameter expression (what retune did before, and what a user writes);
- SI's per-step hooks (copy g after backward; omega += -g * delta after the step): retune's, with buffers
  reused across steps, against a fresh copy of every gradient and delta each step.
Each is run --repeats times after one warm-up; the table gives the median. The values of the two
penalty paths are compared here (value_rel_diff); tests/test_retention.py asserts values and gradients
equal on a small model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from retune import allocator
from retune.retention.common import quadratic_penalty, snapshot, trainable
from retune.retention.si import SI


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def by_expression(model, anchor, coef, weights=None):
    """The penalty as autograd sees the per-parameter expression."""
    total = None
    for n, p in trainable(model):
        if n in anchor:
            d2 = (p.float() - anchor[n]) ** 2
            term = (weights[n] * d2 if weights is not None else d2).sum()
            total = term if total is None else total + term
    return coef * total


def si_hooks_copying(model, state: dict) -> None:
    """SI's hooks with a fresh copy of every gradient and every delta each step."""
    grad = {n: p.grad.detach().float().clone() for n, p in trainable(model)}
    now = {n: p.detach().float() for n, p in trainable(model)}
    delta = torch._foreach_sub(list(now.values()), [state["prev"][n] for n in now])
    torch._foreach_addcmul_([state["omega"][n] for n in now], [grad[n] for n in now], delta, value=-1.0)
    torch._foreach_copy_([state["prev"][n] for n in now], list(now.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    allocator.reexec()  # the malloc `retune train` runs on
    from transformers import AutoModelForCausalLM

    from retune.models.resolve import resolve_base

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = AutoModelForCausalLM.from_pretrained(resolve_base(args.model), dtype=torch.float32)
    model.requires_grad_(True)
    params = trainable(model)
    torch.manual_seed(0)
    anchor = snapshot(model)
    with torch.no_grad():
        for _, p in params:
            p.add_(torch.randn_like(p), alpha=1e-3)
            p.grad = torch.randn_like(p)
    fisher = {n: torch.rand_like(p) for n, p in params}

    rows = []
    for name, weights in (("ewc / si penalty", fisher), ("l2sp penalty", None)):
        ours = timed(lambda w=weights: quadratic_penalty(model, anchor, 0.5, w).backward(), args.repeats)
        plain = timed(lambda w=weights: by_expression(model, anchor, 0.5, w).backward(), args.repeats)
        a, b = quadratic_penalty(model, anchor, 0.5, weights).item(), by_expression(model, anchor, 0.5, weights).item()
        rows.append({"what": name, "retune_ms": 1e3 * ours, "before_ms": 1e3 * plain, "value_rel_diff": abs(a - b) / abs(b)})
    si = SI(weight=1.0)
    si.begin(model)
    state = {"prev": {n: t.clone() for n, t in si.start.items()}, "omega": {n: torch.zeros_like(t) for n, t in si.start.items()}}
    ours = timed(lambda: (si.before_step(model), si.after_step(model)), args.repeats)
    plain = timed(lambda: si_hooks_copying(model, state), args.repeats)
    rows.append({"what": "si step hooks", "retune_ms": 1e3 * ours, "before_ms": 1e3 * plain})
    print(f"{'per step (median of ' + str(args.repeats) + ')':32} {'retune ms':>10} {'before ms':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['what']:32} {r['retune_ms']:10.0f} {r['before_ms']:10.0f} {r['before_ms'] / r['retune_ms']:6.2f}x")
    out = {
        "command": "python benchmarks/penalty_speed.py " + " ".join(sys.argv[1:]),
        "allocator": allocator.active(),
        "cpu": next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x), "?"),
        "parameters": sum(p.numel() for _, p in params),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
