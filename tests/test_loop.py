"""The training loop itself (`fit`), called directly on the tiny in-process Llama: its invariants and its hooks."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from conftest import make_reviews
from retune.config import AdapterConfig, TrainerConfig, validate
from retune.data.templates import Formatter
from retune.retention import RetentionContext, build
from retune.retention.common import trainable
from retune.train.checkpoint import latest_checkpoint
from retune.train.loop import Hooks, StepResult, fit


@pytest.fixture(scope="module")
def setup(tiny_model):
    """(pad id, 24 encoded reviews: 16 to train on, 8 to validate on)."""
    from retune.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    data = validate({"data": {"max_length": 64, "template": {"prompt": "Review: {text}", "response": "{label}"}}}).data
    fmt = Formatter(tok, data)
    return tok.pad_token_id, [fmt.encode_record(data.template, r, "t") for r in make_reviews(24, seed=5)]


def _model(tiny_model, dropout=0.0):
    from transformers import AutoModelForCausalLM

    from retune.models.load import attach_adapter

    torch.manual_seed(0)  # the same LoRA initialisation in every run
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, attn_implementation="eager")
    return attach_adapter(model, AdapterConfig(type="lora", r=4, alpha=8, dropout=dropout, target_modules="all-linear"))


def _fit(tiny_model, setup, ckpt_dir, trainer, retention=(), hooks=None, resume=False, dropout=0.0, train=None, val=()):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a bf16 Accelerator of an earlier test would otherwise set this one's precision
    pad_id, examples = setup
    model = _model(tiny_model, dropout)
    ctx = RetentionContext(pad_id=pad_id, autocast=nullcontext, anchor_data=examples[16:])
    regs = build(validate({"retention": list(retention), "retain": {"tasks": [{"train": "x.jsonl"}]}}).retention, model, ctx)
    cfg = TrainerConfig(**{"lr": 1e-2, "precision": "fp32", "seed": 3, "compile": False, "log_every": 1, **trainer})
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = fit(model, train or examples[:16], list(val), cfg, pad_id, Accelerator(cpu=True), ckpt_dir, regs, hooks, resume=resume)
    return model, state


def _recorder():
    rows: list[dict] = []
    return rows, Hooks(log=rows.append)


def _losses(rows):
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_grad_accumulation_1x8_equals_8x1_with_loss_weights(tmp_path, tiny_model, setup):
    _, examples = setup
    # two tasks' loss weights in one batch: per-row weights must split across micro-batches the same way
    weighted = [e if i % 2 else type(e)(e.input_ids, e.labels, e.prompt_len, weight=0.5) for i, e in enumerate(examples[:16])]
    # (distillation on `retain` prompts draws a batch per micro-batch, so only `new` is split-invariant)
    retention = [{"method": "l2sp", "weight": 1.0}, {"method": "distill", "weight": 1.0, "prompts": ["new"]}]
    big_rows, big_hooks = _recorder()
    small_rows, small_hooks = _recorder()
    one_by_eight, eight_by_one = {"max_steps": 4, "batch_size": 8}, {"max_steps": 4, "batch_size": 1, "grad_accum": 8}
    big, _ = _fit(tiny_model, setup, tmp_path / "big", one_by_eight, retention, big_hooks, train=weighted)
    small, _ = _fit(tiny_model, setup, tmp_path / "small", eight_by_one, retention, small_hooks, train=weighted)
    assert [r["step"] for r in _train_rows(big_rows)] == [1, 2, 3, 4]
    for b, s in zip(_train_rows(big_rows), _train_rows(small_rows), strict=True):
        for key in ("loss", "penalty/l2sp", "penalty/distill"):
            assert s[key] == pytest.approx(b[key], abs=1e-5), (b["step"], key)
        assert s["tokens"] == b["tokens"]
    big_w, small_w = dict(trainable(big)), dict(trainable(small))
    for n in big_w:
        torch.testing.assert_close(small_w[n], big_w[n], atol=1e-5, rtol=1e-4)


def test_resume_equals_uninterrupted_with_regularizers(tmp_path, tiny_model, setup):
    # EWC and SI carry state in the checkpoint (SI's running path integral); distillation its cursor;
    # dropout draws random numbers, so the RNG state must resume too
    retention = [
        {"method": "ewc", "weight": 1.0, "samples": 4},
        {"method": "si", "weight": 1.0, "warmup_steps": 2},
        {"method": "distill", "weight": 1.0, "prompts": ["retain"], "batch_size": 3},
    ]
    trainer = {"max_steps": 7, "batch_size": 4, "save_every": 100, "scheduler": "cosine", "warmup_steps": 2}
    whole_rows, hooks = _recorder()
    _fit(tiny_model, setup, tmp_path / "whole", trainer, retention, hooks, dropout=0.1)

    def press_ctrl_c(state, result):
        if state.step == 3:
            raise KeyboardInterrupt

    ended = []
    cut = Hooks(on_step=press_ctrl_c, on_end=lambda: ended.append(1))
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_model, setup, tmp_path / "cut", trainer, retention, cut, dropout=0.1)
    assert ended == [1], "on_end runs on Ctrl-C too"
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000003"

    rows, hooks = _recorder()
    starts = []
    hooks.on_start = lambda total, done: starts.append((total, done))
    _fit(tiny_model, setup, tmp_path / "cut", trainer, retention, hooks, resume=True, dropout=0.1)
    assert starts == [(7, 3)]
    assert rows[0]["event"] == "resumed" and rows[0]["step"] == 3
    whole, resumed = {r["step"]: r for r in whole_rows if "loss" in r}, {r["step"]: r for r in rows if "loss" in r}
    assert sorted(resumed) == [4, 5, 6, 7]
    for step in resumed:
        for key in ("loss", "penalty/ewc", "penalty/si", "penalty/distill", "tokens"):
            assert resumed[step][key] == pytest.approx(whole[step][key], abs=1e-5), (step, key)


def test_epochs_advance_and_the_position_is_exact(tmp_path, tiny_model, setup):
    """train as a function epoch -> examples: drawn once per epoch; the state says where the loop is."""
    _, examples = setup
    drawn = []

    def epoch_examples(epoch):
        drawn.append(epoch)
        return examples[:16]

    # 16 examples, global batch 4: 4 steps per epoch; 6 steps end half-way through the second epoch
    _, state = _fit(tiny_model, setup, tmp_path / "a", {"max_steps": 6, "batch_size": 2, "grad_accum": 2}, train=epoch_examples)
    assert (state.step, state.epoch, state.batch_in_epoch) == (6, 1, 2)
    assert set(drawn) == {0, 1}
    # 8 steps end exactly at the second epoch's end: the position moves to the next epoch's start
    _, state = _fit(tiny_model, setup, tmp_path / "b", {"max_steps": 8, "batch_size": 4}, train=lambda epoch: examples[:16])
    assert (state.step, state.epoch, state.batch_in_epoch) == (8, 2, 0)


def test_hooks_on_step_and_on_eval_stop(tmp_path, tiny_model, setup):
    _, examples = setup
    results: list[StepResult] = []
    evals = []

    def on_eval(model, state):
        evals.append(state.step)
        return state.step >= 4  # the recipe says stop at the second evaluation

    rows, hooks = _recorder()
    hooks.on_step = lambda state, result: results.append(result)
    hooks.on_eval = on_eval
    retention = [{"method": "l2sp", "weight": 1.0}]
    _, state = _fit(tiny_model, setup, tmp_path, {"max_steps": 10, "batch_size": 4, "eval_every": 2}, retention, hooks, val=examples[16:])
    assert evals == [2, 4] and state.stopped_early and state.step == 4
    assert latest_checkpoint(tmp_path).name == "step-0000004"  # a stop is checkpointed
    totals = [r["tokens"] for r in _train_rows(rows)]
    assert [r.tokens for r in results] == [b - a for a, b in zip([0, *totals[:-1]], totals, strict=True)]  # each step's global batch
    assert all(set(r.penalties) == {"l2sp"} and r.loss > 0 for r in results)
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]


def _train_rows(rows):
    return [r for r in rows if "loss" in r]
