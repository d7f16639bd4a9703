"""Packing (data/packing.py): a packed batch gives the padded batch's loss and gradients, and packing is
refused (or turned off) where it cannot be exact."""

from __future__ import annotations

import random

import pytest
import torch

from retune.data.batching import collate, next_token_mask, padded_width
from retune.data.packing import collate_packed, isolates, micro_batches, pack, packed_micro_batches
from retune.data.templates import Encoded
from retune.objectives import SFT

PAD = 0


def _examples(n: int = 13, seed: int = 0, weighted: bool = False) -> list[Encoded]:
    """Examples of 4-30 tokens with a labelled response; the first has every token labelled (as with
    data.train_on_prompt), so its first token's label must not leak into a packed row."""
    g = random.Random(seed)
    out = []
    for i in range(n):
        length = g.randint(4, 30)
        prompt = g.randint(1, length - 1)
        ids = [g.randrange(3, 300) for _ in range(length)]
        labels = list(ids) if i == 0 else [-100] * prompt + ids[prompt:]
        out.append(Encoded(ids, labels, prompt, weight=1.0 + (i % 3) / 2 if weighted else 1.0))
    return out


def _model(tiny_model, adapter: str, attention: str):
    from transformers import AutoModelForCausalLM

    from retune.config import validate
    from retune.models.load import prepare_for_training

    cfg = validate({"adapter": {"type": adapter, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    model = prepare_for_training(model, cfg, bf16_autocast=False)  # eager becomes retune's lean attention
    if adapter != "full":  # LoRA's B starts at zero; move it so every adapter weight gets a gradient
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model.train()


def _loss_and_grads(model, batches: list[dict], scale: float) -> tuple[float, dict[str, torch.Tensor]]:
    total = 0.0
    for batch in batches:
        loss, _ = SFT.loss(model, batch, scale)
        loss.backward()
        total += loss.item()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total, grads


def test_pack_fills_rows_and_keeps_every_example_once():
    lengths = [30, 5, 12, 64, 20, 7, 33, 1, 18]
    rows = pack(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 3 and rows == pack(lengths, 64)  # 190 tokens in 3 rows of 64: full; the same every time


def test_packed_layout_restarts_positions_and_drops_first_labels():
    a, b = Encoded([5, 6, 7], [5, 6, 7], 0), Encoded([8, 9], [-100, 9], 1)
    batch = collate_packed([[a, b], [b]], PAD)
    # the width rounds up to a multiple of 8 (batching.PAD_MULTIPLE); the padding is a sequence of its own
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, PAD, PAD, PAD], [8, 9] + [PAD] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100], [-100, 9] + [-100] * 6]
    assert next_token_mask(batch).tolist() == [[True, True, False, True] + [False] * 3, [True] + [False] * 6]
    assert "attention_mask" not in batch and "weights" not in batch


def test_a_step_packs_only_where_that_saves_work():
    short = [Encoded([5] * 10, [5] * 10, 0) for _ in range(8)]
    steps = micro_batches(short, 2, PAD, 64, collate)  # 4 padded forwards of 2 x 10; packed: 3 rows of up to 20 slots
    assert all("position_ids" in b for b in steps) and len(steps) < 4
    even = [Encoded([5] * 30, [5] * 30, 0) for _ in range(4)]
    steps = micro_batches(even, 4, PAD, 64, collate)  # one padded 4 x 30 forward: packing would save nothing
    assert len(steps) == 1 and "attention_mask" in steps[0]
    assert all("attention_mask" in b for b in micro_batches(short, 2, PAD, None, collate))  # packing off


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_packed_batch_has_the_padded_loss_and_gradients(tiny_model, adapter, attention):
    model = _model(tiny_model, adapter, attention)
    examples = _examples(weighted=True)
    scale = 1.0 / sum(SFT.count(e) for e in examples)  # the loop's normaliser: labelled tokens of the step
    want, want_grads = _loss_and_grads(model, [collate(examples, PAD)], scale)
    packed = packed_micro_batches(examples, 64, 4, PAD)
    longest = padded_width(max(len(e.input_ids) for e in examples))
    assert len(packed) >= 2 and all(b["input_ids"].numel() <= 4 * longest for b in packed)  # within padding's area
    assert sum(len(b["input_ids"]) for b in packed) < len(examples)  # several examples per row
    got, got_grads = _loss_and_grads(model, packed, scale)
    assert got == pytest.approx(want, abs=1e-5)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 0
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-5, rtol=1e-4), (name, (got_grads[name] - g).abs().max())


def test_distillation_on_new_batches_is_the_same_packed(tiny_model):
    from retune.retention.distill import Distillation

    model = _model(tiny_model, "lora", "eager")
    examples = _examples(n=6)
    kd = Distillation(weight=1.0, on=("new",))  # the teacher: the base (adapters off)
    with torch.no_grad():
        padded = kd.batch_penalty(model, collate(examples, PAD), 0.01)
        packed = sum(kd.batch_penalty(model, b, 0.01) for b in packed_micro_batches(examples, 64, 4, PAD))
    assert padded.item() > 0 and packed.item() == pytest.approx(padded.item(), rel=1e-5)


def test_isolates_tells_apart_a_model_that_ignores_the_restarts(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert isolates(model) and model.training is False
    model.train()
    forward = model.forward

    def no_positions(*args, position_ids=None, **kwargs):  # a forward that drops the position ids
        return forward(*args, **kwargs)

    model.forward = no_positions
    assert not isolates(model) and model.training


def test_isolates_probes_under_the_training_autocast(tiny_model):
    """bf16 frozen weights with fp32 LoRA weights (retune's default where bf16 is fast) run only under
    autocast: probed without it the forward fails, which turned packing off for every such run."""
    from retune.config import RetuneConfig
    from retune.models.load import load_base, prepare_for_training

    cfg = RetuneConfig.model_validate({"model": {"base": str(tiny_model), "dtype": "bf16"}, "adapter": {"type": "lora", "r": 4}})
    model = prepare_for_training(load_base(cfg), cfg, bf16_autocast=True)
    assert not isolates(model)
    assert isolates(model, lambda: torch.autocast("cpu", dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "section, why",
    [
        ({"model": {"task": "seq2seq"}}, "model.task=seq2seq has its own batch layout"),
        ({"model": {"task": "seq_cls"}, "data": {"labels": ["a", "b"]}}, "model.task=seq_cls has its own batch layout"),
        ({"adapter": {"type": "prefix_tuning"}}, "adapter.type=prefix_tuning prepends virtual tokens"),
        ({"objective": {"type": "dpo"}}, "a dpo stage batches (prompt, chosen, rejected) pairs"),
    ],
)
def test_packing_true_is_refused_where_it_cannot_be_exact(section, why):
    from retune.config import validate
    from retune.errors import UsageError

    raw = {k: dict(v) for k, v in section.items()}
    raw.setdefault("data", {})["packing"] = True
    with pytest.raises((UsageError, ValueError), match="data.packing: true cannot be exact here") as err:
        validate(raw)
    assert why in str(err.value)
    raw["data"]["packing"] = "auto"
    validate(raw)  # auto: the same config is accepted, with packing off


def test_packed_run_trains_like_the_padded_one(tmp_path, tiny_model, tiny_data, monkeypatch):
    """The whole recipe: the same loss at every step packed and padded, the run saying which it did."""
    import retune.train.loop as loop_mod
    from conftest import tiny_config
    from helpers import losses, read_metrics, write_config
    from retune.cli import run_train

    packed_steps = []

    def counting(*args, **kwargs):
        out = micro_batches(*args, **kwargs)
        packed_steps.append(any("position_ids" in b for b in out))
        return out

    runs = {}
    monkeypatch.setattr(loop_mod, "micro_batches", counting)
    for packing in (True, False):
        cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"max_steps": 4, "batch_size": 2, "grad_accum": 4})
        cfg["data"].update(packing=packing, max_length=128)  # rows of 3 examples: 3 forwards a step instead of 4
        cfg["output"]["name"] = f"packing-{packing}"
        runs[packing] = run_train(str(write_config(tmp_path / f"{packing}.yaml", cfg)))[0]
    assert packed_steps[:4] == [True] * 4 and packed_steps[4:] == [False] * 4  # every step of the first run packed
    packed, padded = losses(runs[True]), losses(runs[False])
    assert packed.keys() == padded.keys() == {1, 2, 3, 4}
    assert all(packed[s] == pytest.approx(padded[s], abs=1e-4) for s in packed), (packed, padded)
    event = next(r for r in read_metrics(runs[True]) if r.get("event") == "packing")
    assert event["width"] == 128
    assert not any(r.get("event") == "packing" for r in read_metrics(runs[False]))
