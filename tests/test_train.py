"""The real recipe on a tiny in-process Llama: adapters, resume, accumulation, determinism."""

from __future__ import annotations

import json

import pytest

import retune.session as run_mod
from conftest import tiny_config
from helpers import InterruptAt, losses, write_config
from retune.cli import run_train as train


def _train(tmp_path, tiny_model, tiny_data, name="cfg", resume=None, **sections):
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", **sections)
    path = write_config(tmp_path / f"{name}.yaml", cfg)
    return train(str(path), resume=resume)


@pytest.mark.parametrize(
    "adapter",
    [
        {"type": "full"},
        {"type": "lora"},
        {"type": "dora"},
        {"type": "ia3"},
        {"type": "prompt_tuning", "num_virtual_tokens": 4},
        {"type": "prefix_tuning", "num_virtual_tokens": 4},
        {"type": "loha", "target_modules": ["q_proj", "v_proj"]},
    ],
    ids=lambda a: a["type"],
)
def test_adapters_train_and_write_run_dir(tmp_path, tiny_model, tiny_data, adapter):
    run_dir, summary = _train(tmp_path, tiny_model, tiny_data, adapter=adapter)
    assert summary["status"] == "completed"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "tokenizer"):
        assert (run_dir / name).exists(), name
    assert (run_dir / ("model" if adapter["type"] == "full" else "adapter")).is_dir()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(on_disk["base"]) == set(on_disk["final"]) == {"train"}
    for key in ("tokens", "tokens_per_second", "peak_memory_mb", "wall_seconds", "trainable_params", "total_params"):
        assert on_disk["train"][key] > 0, key
    assert on_disk["train"]["trainable_params"] <= on_disk["train"]["total_params"]


def test_qlora_trains_on_a_4bit_base(tmp_path, tiny_model, tiny_data):
    pytest.importorskip("bitsandbytes")
    run_dir, summary = _train(tmp_path, tiny_model, tiny_data, adapter={"type": "qlora", "target_modules": ["q_proj", "v_proj"]})
    assert summary["status"] == "completed"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_training_lowers_validation_loss(tmp_path, tiny_model, tiny_data):
    _, s = _train(tmp_path, tiny_model, tiny_data, trainer={"max_steps": 30, "lr": 3e-2})
    assert s["final"]["train"]["val_loss"] < s["base"]["train"]["val_loss"]


def test_same_seed_same_loss_curve(tmp_path, tiny_model, tiny_data):
    a, _ = _train(tmp_path, tiny_model, tiny_data, name="a", adapter={"dropout": 0.1})
    b, _ = _train(tmp_path, tiny_model, tiny_data, name="b", adapter={"dropout": 0.1})
    assert sorted(losses(a)) == [1, 2, 3, 4]  # every step logged (log_every 1): the curves are not empty
    assert losses(a) == losses(b)


def test_grad_accumulation_1x8_equals_8x1(tmp_path, tiny_model, tiny_data):
    big, _ = _train(tmp_path, tiny_model, tiny_data, name="big", trainer={"batch_size": 8, "grad_accum": 1, "max_steps": 5})
    small, _ = _train(tmp_path, tiny_model, tiny_data, name="small", trainer={"batch_size": 1, "grad_accum": 8, "max_steps": 5})
    lb, ls = losses(big), losses(small)
    assert lb.keys() == ls.keys()
    for step in lb:
        assert lb[step] == pytest.approx(ls[step], abs=1e-5), step


def test_resume_equals_uninterrupted(tmp_path, tiny_model, tiny_data, monkeypatch):
    trainer = {"max_steps": 8, "save_every": 100, "scheduler": "cosine", "warmup_steps": 2}
    adapter = {"dropout": 0.1}  # dropout draws random numbers: the RNG state must resume too
    whole, _ = _train(tmp_path, tiny_model, tiny_data, name="whole", trainer=trainer, adapter=adapter)

    monkeypatch.setattr(run_mod, "LiveProgress", InterruptAt(3))
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_model, tiny_data, name="cut", trainer=trainer, adapter=adapter)
    cut_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("tiny") and p != whole)
    summary = json.loads((cut_dir / "summary.json").read_text())
    assert summary["status"].startswith("interrupted")
    assert (cut_dir / "checkpoints" / "step-0000003").is_dir()

    monkeypatch.setattr(run_mod, "LiveProgress", InterruptAt(-1))
    resumed, s = train(None, resume=str(cut_dir))
    assert s["status"] == "completed"
    lw, lr = losses(whole), losses(resumed)
    assert set(lr) == set(range(1, 9))
    for step in range(4, 9):
        assert lr[step] == pytest.approx(lw[step], abs=1e-5), step


def test_early_stopping_and_best_weights(tmp_path, tiny_model, tiny_data):
    # full fine-tuning at a constant, unclipped high rate overshoots: validation loss turns up
    _, s = _train(
        tmp_path,
        tiny_model,
        tiny_data,
        adapter={"type": "full"},
        trainer={
            "max_steps": 40,
            "lr": 0.05,
            "eval_every": 2,
            "early_stopping_patience": 2,
            "scheduler": "constant",
            "max_grad_norm": None,
        },
    )
    t = s["train"]
    assert t["stopped_early"] and t["steps"] < 40
    # the final weights are the best ones: the final validation loss is the best seen
    assert s["final"]["train"]["val_loss"] == pytest.approx(t["best_val_loss"], rel=1e-4)


def test_multitask_run_logs_each_tasks_validation_loss_and_scores(tmp_path, tiny_model, tiny_data):
    from helpers import read_metrics

    tasks = [
        {
            "name": "sentiment",
            "train": str(tiny_data["train"]),
            "test": str(tiny_data["test"]),
            "weight": 0.5,
            "template": {"prompt": "Review: {text}\nSentiment?", "response": "{label}"},
            "labels": ["negative", "positive"],
        },
        {
            "name": "repeat",
            "train": str(tiny_data["train"]),
            "test": str(tiny_data["test"]),
            "weight": 0.5,
            "metric": "exact_match",
            "template": {"prompt": "Repeat: {text}", "response": "{text}"},
            "max_new_tokens": 4,
        },
    ]
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"max_steps": 4, "eval_every": 2})
    cfg["data"] = {"tasks": tasks, "mixing": "fractions", "max_length": 64}
    run_dir, s = train(str(write_config(tmp_path / "multi.yaml", cfg)))
    evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:  # the pooled loss is the token-weighted mean of the per-task ones
        per = [r["val_loss/sentiment"], r["val_loss/repeat"]]
        assert min(per) <= r["val_loss"] <= max(per)
    assert set(s["base"]) == set(s["final"]) == {"sentiment", "repeat"}
    assert "accuracy" in s["final"]["sentiment"] and "exact_match" in s["final"]["repeat"]


def test_fast_path_loss_curve_matches_plain_fp32(tmp_path, tiny_model, tiny_data):
    """bf16 base + bf16 autocast + lean activations (the CPU default) vs everything in fp32 with the stock
    layers: the same loss curve within bf16 tolerance."""
    common = {"max_steps": 12, "lr": 5e-3, "log_every": 1}
    adapter = {"dropout": 0.0}
    fast, _ = _train(
        tmp_path,
        tiny_model,
        tiny_data,
        name="fast",
        model={"dtype": "bf16"},
        adapter=adapter,
        trainer={**common, "precision": "bf16", "lean_activations": True},
    )
    plain, _ = _train(
        tmp_path,
        tiny_model,
        tiny_data,
        name="plain",
        model={"dtype": "fp32", "attention": "eager"},
        adapter=adapter,
        trainer={**common, "precision": "fp32", "lean_activations": False},
    )
    a, b = losses(fast), losses(plain)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert b[12] < b[1]  # it learns
    worst = max(abs(a[s] - b[s]) / b[s] for s in a)
    print(f"largest relative gap {worst:.4f}; loss {b[1]:.3f} -> {b[12]:.3f}")
    assert worst < 0.01


def test_every_score_has_its_interval_and_per_example_file(tmp_path, tiny_model, tiny_data):
    run_dir, s = _train(tmp_path, tiny_model, tiny_data, name="ci")
    u = s["uncertainty"]
    base, tuned = u["base"]["train"]["accuracy"], u["tuned"]["train"]["accuracy"]
    assert tuned["n"] == 24 and tuned["method"] == "wilson"
    assert tuned["mean"] == pytest.approx(s["final"]["train"]["accuracy"]) and base["mean"] == pytest.approx(s["base"]["train"]["accuracy"])
    assert tuned["low"] <= tuned["mean"] <= tuned["high"]
    change = u["change"]["train"]["accuracy"]
    assert change["delta"] == pytest.approx(tuned["mean"] - base["mean"])
    assert change["low"] <= change["delta"] <= change["high"]
    rows = [json.loads(line) for line in (run_dir / "scores" / "train-tuned.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and sum(r["accuracy"] for r in rows) / 24 == pytest.approx(tuned["mean"])
    assert all(r["accuracy"] == float(r["prediction"] == r["reference"]) for r in rows)
    _, s2 = _train(tmp_path, tiny_model, tiny_data, name="ci2")
    assert len(s["tasks"]["train"]["data_sha256"]) == 64 and s["tasks"]["train"]["data_sha256"] == s2["tasks"]["train"]["data_sha256"]


@pytest.mark.parametrize("multitask", [False, True], ids=["one-task", "two-tasks"])
def test_tuned_scoring_reuses_the_last_evaluations_loss(tmp_path, tiny_model, tiny_data, monkeypatch, multitask):
    """The loop evaluated the final weights at its last step: the tuned model's validation loss is that
    evaluation's (no second pass), and equal to scoring it again."""
    from helpers import read_metrics
    from retune.evaluate import scoring
    from retune.session import retain as retain_mod
    from retune.session.known import KnownLosses

    calls, retained = [], []
    real = scoring.mean_nll
    monkeypatch.setattr(scoring, "mean_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    real_retained = retain_mod.score_retained
    monkeypatch.setattr(retain_mod, "score_retained", lambda *a, **k: retained.append(1) or real_retained(*a, **k))
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"max_steps": 4, "eval_every": 2})
    cfg["retain"] = {"probe_samples": 4}
    if multitask:
        task = {"train": str(tiny_data["train"]), "test": str(tiny_data["test"]), "labels": ["negative", "positive"]}
        task["template"] = {"prompt": "Review: {text}\nSentiment?", "response": "{label}"}
        cfg["data"] = {"tasks": [{"name": n, **task} for n in "ab"], "max_length": 64}
    run_dir, s = train(str(write_config(tmp_path / "a.yaml", cfg)))
    tasks = sorted(s["final"])
    assert len(calls) == len(tasks)  # the base model's, per task; none for the tuned model
    assert len(retained) == 3  # the base model, steps 2 and 4; the tuned model is step 4's weights
    last = [r for r in read_metrics(run_dir) if "val_loss" in r][-1]
    logged = [last["val_loss"]] if len(tasks) == 1 else [last[f"val_loss/{t}"] for t in tasks]
    assert [s["final"][t]["val_loss"] for t in tasks] == logged
    monkeypatch.setattr(KnownLosses, "of", lambda self, model: {})
    _, again = train(str(write_config(tmp_path / "b.yaml", {**cfg, "output": {"dir": str(tmp_path / "runs2")}})))
    assert len(calls) == 2 * len(tasks)  # the tuned model's only: the base scores came from the first run (eval.base_cache)
    for t in tasks:
        assert again["final"][t]["val_loss"] == pytest.approx(s["final"][t]["val_loss"], rel=1e-5)


def test_weights_fingerprint_follows_every_write(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.session.known import fingerprint

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    first = fingerprint(model)
    assert fingerprint(model) == first
    trainable = next(p for p in model.parameters() if p.requires_grad)
    frozen = next(p for p in model.parameters() if not p.requires_grad)
    with torch.no_grad():
        trainable.add_(1e-3)
        second = fingerprint(model)
        assert second != first
        frozen.mul_(1.0)  # an in-place write, even one that changes no value (a merge then unmerge)
        third = fingerprint(model)
        assert third != second
    from retune.evaluate.scoring import fp32_weights

    with fp32_weights(model):  # scoring in fp32 and back, bit for bit: the same weights
        pass
    assert fingerprint(model) == third


def test_base_scores_are_reused_by_a_run_with_the_same_inputs(tmp_path, tiny_model, tiny_data, monkeypatch):
    """eval.base_cache: a second run that differs only in how it trains copies the first run's base
    scores (summary, per-example files, retention) instead of scoring again; other data, or
    eval.base_cache: false, scores again."""
    from helpers import read_metrics
    from retune.session import Session

    scored = []
    real = Session.score
    monkeypatch.setattr(Session, "score", lambda self, m, stage, key: scored.append(key) or real(self, m, stage, key))
    repeat = {"train": str(tiny_data["test"]), "template": {"prompt": "Repeat: {text}", "response": "{text}"}, "max_new_tokens": 2}
    retain = {"tasks": [repeat], "probe_samples": 4, "max_eval_samples": 6}

    def run(name, **sections):
        cfg = tiny_config(tiny_model, tiny_data, tmp_path / name, retain=retain, **sections)
        return train(str(write_config(tmp_path / f"{name}.yaml", cfg)))

    first, a = run("a")
    second, b = run("b", trainer={"lr": 3e-3, "max_steps": 2})
    assert scored == ["base", "tuned", "tuned"]
    assert any(r.get("event") == "base_cache" for r in read_metrics(second))
    assert b["base"] == a["base"] and b["retention"]["general-text"]["base"] == a["retention"]["general-text"]["base"]
    for f in sorted((first / "scores").glob("*-base.jsonl")):
        assert (second / "scores" / f.name).read_text() == f.read_text()
    assert b["uncertainty"]["base"] == a["uncertainty"]["base"]
    run("c", data={"max_eval_samples": 10})
    run("d", eval={"base_cache": False})
    assert scored == ["base", "tuned", "tuned", "base", "tuned", "base", "tuned"]
