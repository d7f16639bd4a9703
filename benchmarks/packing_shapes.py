"""Packing vs padding on the same steps: forward + backward time, token slots and forwards per layout.

    python benchmarks/packing_shapes.py          # SmolLM2-135M LoRA, three (lengths, batch x accumulation) shapes

One process; each shape runs 5 global batches of real review text (the throughput benchmark's
sequences) padded (data.packing: false), packed on every step, and auto (packed where data/packing.py's
rule says it saves work), twice each after one warm-up pass, so the spread of a layout is visible.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = ((20, 100, 128, 2, 4), (20, 100, 128, 8, 1), (64, 256, 256, 4, 2))  # min len, max len, width, batch, accumulation


def main() -> None:
    from retune.config import RetuneConfig
    from retune.data.batching import batch_indices, collate
    from retune.data.packing import micro_batches, packed_micro_batches
    from retune.data.templates import Encoded
    from retune.models.load import load_base, prepare_for_training
    from retune.models.resolve import resolve_base
    from retune.session import make_accelerator, setup_torch
    from throughput import make_sequences

    md = resolve_base("smollm2-135m-instruct")
    adapter = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    cfg = RetuneConfig.model_validate({"model": {"base": md}, "adapter": adapter})
    setup_torch(cfg)
    acc = make_accelerator(cfg)
    model = prepare_for_training(load_base(cfg, md), cfg, bf16_autocast=acc.mixed_precision == "bf16")
    for lo, hi, width, bs, ga in SHAPES:
        ex = [Encoded(s, list(s), 0) for s in make_sequences(md, 48, lo, hi)]
        steps = [[ex[i] for i in b] for b in batch_indices([len(e.input_ids) for e in ex], bs * ga, 0, 0)[:5]]
        modes = {
            "padded": functools.partial(micro_batches, batch_size=bs, pad_id=0, pack_to=None, collate=collate),
            "packed": functools.partial(packed_micro_batches, width=width, batch_size=bs, pad_id=0),
            "auto": functools.partial(micro_batches, batch_size=bs, pad_id=0, pack_to=width, collate=collate),
        }
        time_layout(model, acc, steps, modes["padded"])  # warm-up
        for name in (*modes, *modes):
            t, slots, forwards = time_layout(model, acc, steps, modes[name])
            print(f"lengths {lo}-{hi}, batch {bs} x {ga}, {name:6}: {t:.2f} s, {slots} token slots, {forwards} forwards", flush=True)


def time_layout(model, acc, steps: list, make) -> tuple[float, int, int]:
    """Seconds of forward + backward over the steps laid out by `make`, token slots and forwards."""
    from retune.objectives import SFT

    t, slots, forwards = time.perf_counter(), 0, 0
    for examples in steps:
        for mb in make(examples):
            slots, forwards = slots + mb["input_ids"].numel(), forwards + 1
            with acc.autocast():
                loss, _ = SFT.loss(model, mb, 1e-3)
            loss.backward()
        model.zero_grad()
    return time.perf_counter() - t, slots, forwards


if __name__ == "__main__":
    main()
