"""Retention methods on the tiny in-process Llama: the invariants each one must keep."""

from __future__ import annotations

import contextlib
import copy
from contextlib import nullcontext

import pytest
import torch

from conftest import make_reviews
from retune.config import AdapterConfig, TrainerConfig, validate
from retune.data.replay import ReplayBuffer, replay_mix
from retune.data.templates import Formatter
from retune.errors import UsageError
from retune.retention import RetentionContext, build
from retune.retention.common import quadratic_penalty, trainable
from retune.retention.distill import Distillation
from retune.retention.ewc import EWC
from retune.retention.l2sp import L2SP
from retune.retention.si import SI


@pytest.fixture(scope="module")
def tok_fmt(tiny_model):
    from retune.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    cfg = validate({"data": {"max_length": 64}})
    return tok, Formatter(tok, cfg.data)


@pytest.fixture(scope="module")
def examples(tok_fmt):
    _, fmt = tok_fmt
    tpl = validate({"data": {"template": {"prompt": "Review: {text}", "response": "{label}"}}}).data.template
    return [fmt.encode_record(tpl, r, "t") for r in make_reviews(16, seed=3)]


def _model(tiny_model, lora=False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, attn_implementation="eager")
    if lora:
        from retune.models.load import attach_adapter

        return attach_adapter(model, AdapterConfig(type="lora", r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    return model.requires_grad_(True)


def _ctx(tok_fmt, examples):
    return RetentionContext(pad_id=tok_fmt[0].pad_token_id, autocast=nullcontext, anchor_data=examples)


def _perturb(model, direction, scale):
    with torch.no_grad():
        for (_, p), d in zip(trainable(model), direction, strict=True):
            p.add_(d, alpha=scale)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ewc_zero_at_anchor_and_quadratic(tiny_model, tok_fmt, examples, lora):
    model = _model(tiny_model, lora)
    ewc = EWC(weight=10.0, samples=8)
    ewc.consolidate(model, _ctx(tok_fmt, examples))
    assert set(ewc.fisher) == {n for n, _ in trainable(model)}  # trainable parameters only (adapters under LoRA)
    assert all((f >= 0).all() for f in ewc.fisher.values())
    assert ewc.step_penalty(model).item() == 0.0
    torch.manual_seed(0)
    direction = [torch.randn_like(p) for _, p in trainable(model)]
    _perturb(model, direction, 1e-2)
    p1 = ewc.step_penalty(model).item()
    _perturb(model, direction, 1e-2)  # now 2x away
    p2 = ewc.step_penalty(model).item()
    assert p1 > 0
    assert p2 == pytest.approx(4 * p1, rel=1e-3)


def test_ewc_memory_is_two_copies_of_the_trainable_weights(tiny_model):
    model = _model(tiny_model, lora=True)
    n = sum(p.numel() for _, p in trainable(model))
    assert EWC.memory_bytes(model) == 8 * n


def test_online_ewc_accumulates_fisher(tiny_model, tok_fmt, examples):
    model = _model(tiny_model)
    ewc = EWC(weight=1.0, samples=4, gamma=0.5)
    ctx = _ctx(tok_fmt, examples)
    ewc.prepare(model, ctx)
    first = {n: f.clone() for n, f in ewc.fisher.items()}
    ewc.end_stage(model, ctx)  # same weights, same data: F = 0.5 F + F
    name = next(iter(first))
    assert torch.allclose(ewc.fisher[name], 1.5 * first[name])


def test_fisher_is_the_mean_of_per_sample_squared_gradients(tiny_model, tok_fmt, examples):
    from retune.data.batching import collate
    from retune.models.loss import token_nll
    from retune.retention.ewc import diagonal_fisher

    model = _model(tiny_model)
    got = diagonal_fisher(model, examples[:3], tok_fmt[0].pad_token_id, contextlib.nullcontext)
    want = {n: torch.zeros_like(p) for n, p in trainable(model)}
    for ex in examples[:3]:
        model.zero_grad()
        nll, n_tok = token_nll(model, collate([ex], tok_fmt[0].pad_token_id))
        (nll.sum() / n_tok.sum()).backward()
        for name, p in trainable(model):
            want[name] += p.grad.detach() ** 2 / 3
    assert all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-12) for n in want)


def test_si_importance_nonnegative_and_zero_for_untouched(tiny_model, tok_fmt, examples):
    model = _model(tiny_model)
    si = SI(weight=1.0, warmup_steps=3, warmup_lr=1e-2)
    before = {n: p.detach().clone() for n, p in trainable(model)}
    si.estimate(model, _ctx(tok_fmt, examples))
    assert all((imp >= 0).all() for imp in si.importance.values())
    assert any(imp.sum() > 0 for imp in si.importance.values())
    # the warm-up path is undone: training starts where it would have
    assert all(torch.equal(p, before[n]) for n, p in trainable(model))
    assert si.step_penalty(model).item() == 0.0  # at its anchor


def test_si_importance_zero_for_untouched_parameters(tiny_model, tok_fmt, examples):
    # A fresh LoRA has B = 0, so one step leaves every A untouched (its gradient is B^T (...) = 0):
    # their importance must be exactly 0, the B's positive.
    model = _model(tiny_model, lora=True)
    si = SI(weight=1.0, warmup_steps=1, warmup_lr=1e-2)
    si.estimate(model, _ctx(tok_fmt, examples))
    a = [v for n, v in si.importance.items() if "lora_A" in n]
    b = [v for n, v in si.importance.items() if "lora_B" in n]
    assert a and all(v.abs().sum() == 0 for v in a)
    assert all((v >= 0).all() for v in b) and sum(v.sum() for v in b) > 0


def test_si_path_integral_online(tiny_model, tok_fmt, examples):
    """With plain SGD, -g * delta = lr * g^2 >= 0: omega accumulates during a stage."""
    from retune.data.batching import collate
    from retune.models.loss import token_nll

    model = _model(tiny_model)
    si = SI(weight=1.0)
    opt = torch.optim.SGD([p for _, p in trainable(model)], lr=1e-2)
    want = {n: torch.zeros_like(p) for n, p in trainable(model)}
    for i in range(2):
        batch = collate(examples[4 * i : 4 * i + 4], tok_fmt[0].pad_token_id)
        nll, n = token_nll(model, batch)
        (nll.sum() / n.sum()).backward()
        si.before_step(model)
        grads = {name: p.grad.detach().clone() for name, p in trainable(model)}
        before = {name: p.detach().clone() for name, p in trainable(model)}
        opt.step()
        opt.zero_grad()
        si.after_step(model)
        for name, p in trainable(model):  # eq. 3: -g * delta (delta = -lr * g up to the rounding of theta)
            want[name] += -grads[name] * (p.detach() - before[name])
    assert all((w >= -1e-12).all() for w in si.omega.values())
    assert all(torch.allclose(si.omega[n], want[n], rtol=1e-5, atol=1e-12) for n in want)
    si.consolidate(model)
    assert si.importance and all((v >= 0).all() for v in si.importance.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [True, False], ids=["ewc-si", "l2sp"])
def test_quadratic_penalty_matches_autograd_of_the_formula(dtype, weighted):
    """coef * sum w (theta - a)^2 in multi-tensor ops: the value and gradients autograd gives the
    per-parameter expression, for fp32 and bf16 parameters (anchors and weights fp32)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3)).to(dtype)
    names = [n for n, _ in model.named_parameters()]
    anchor = {n: p.detach().float() + 0.1 * torch.randn(p.shape) for n, p in model.named_parameters()}
    weights = {n: torch.rand(p.shape) for n, p in model.named_parameters()} if weighted else None
    if weighted:
        del weights[names[-1]]  # a parameter without a weight is not penalised (EWC's Fisher over its parameters)
    coef = 0.7
    want = sum(
        ((weights[n] if weights else 1.0) * (p.float() - anchor[n]) ** 2).sum()
        for n, p in model.named_parameters()
        if weights is None or n in weights
    )
    (coef * want).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = quadratic_penalty(model, anchor, coef, weights)
    got.backward()
    assert got.item() == pytest.approx(coef * want.item(), rel=1e-5)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(expected)
    for n, p in model.named_parameters():
        if n in expected:
            assert p.grad.dtype == dtype
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_l2sp_zero_at_start_then_positive(tiny_model):
    model = _model(tiny_model, lora=True)
    reg = L2SP(weight=1.0)
    reg.prepare(model)
    assert reg.step_penalty(model).item() == 0.0
    _perturb(model, [torch.ones_like(p) for _, p in trainable(model)], 0.1)
    n = sum(p.numel() for _, p in trainable(model))
    assert reg.step_penalty(model).item() == pytest.approx(0.5 * 0.01 * n, rel=1e-4)


@pytest.mark.parametrize("lora", [False, True], ids=["full-frozen-copy", "lora-adapters-off"])
def test_distillation_against_itself_is_zero(tiny_model, tok_fmt, examples, lora):
    from retune.data.batching import collate

    model = _model(tiny_model, lora)  # a fresh LoRA adapter is the identity: teacher == student
    reg = Distillation(weight=1.0, temperature=2.0, on=("new", "retain"), batch_size=4)
    reg.prepare(model, _ctx(tok_fmt, examples))
    assert (reg.teacher is None) == lora  # LoRA: no second copy in memory
    batch = collate(examples[:4], tok_fmt[0].pad_token_id)
    term = reg.batch_penalty(model, batch, 1.0 / 8)
    assert abs(term.item()) < 1e-6
    _perturb(model, [torch.randn_like(p) * 0.05 for _, p in trainable(model)], 1.0)
    assert reg.batch_penalty(model, batch, 1.0 / 8).item() > 1e-6


def _fit(tiny_model, tok_fmt, examples, tmp_path, method_cfgs):
    from accelerate import Accelerator

    from retune.train.loop import fit

    torch.manual_seed(0)
    model = _model(tiny_model, lora=True)
    regs = build(method_cfgs, model, _ctx(tok_fmt, examples))
    cfg = TrainerConfig(max_steps=3, batch_size=4, lr=1e-2, precision="fp32", seed=1, compile=False)
    tmp_path.mkdir(parents=True, exist_ok=True)
    fit(model, examples, [], cfg, tok_fmt[0].pad_token_id, Accelerator(cpu=True), tmp_path, regs)
    return {n: p.detach().clone() for n, p in trainable(model)}


@pytest.mark.parametrize("method", ["ewc", "si", "l2sp", "distill"])
def test_weight_zero_equals_plain_run(tiny_model, tok_fmt, examples, tmp_path, method):
    plain = _fit(tiny_model, tok_fmt, examples, tmp_path / "plain", [])
    cfg = validate({"retention": [{"method": method, "weight": 0}], "retain": {"tasks": [{"train": "x.jsonl"}]}}).retention
    zero = _fit(tiny_model, tok_fmt, examples, tmp_path / "zero", cfg)
    assert all(torch.equal(plain[n], zero[n]) for n in plain)
    heavy = _fit(tiny_model, tok_fmt, examples, tmp_path / "heavy", [c.model_copy(update={"weight": 1e3}) for c in cfg])
    assert any(not torch.equal(plain[n], heavy[n]) for n in plain)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.25, 0.5])
def test_replay_share_within_two_points(share):
    new = [("new", i) for i in range(137)]
    buffer = [("old", i) for i in range(40)]
    mixed = replay_mix(new, buffer, share, seed=3)
    got = sum(1 for x in mixed if x[0] == "old") / len(mixed)
    assert abs(got - share) <= 0.02
    assert sorted(x for x in mixed if x[0] == "new") == new  # every new example exactly once


def test_replay_buffer_carries_across_stages():
    buf = ReplayBuffer(per_task=3)
    buf.add("a", list(range(10)))
    buf.add("b", list(range(2)))
    assert len(buf) == 5 and buf.examples() == [0, 1, 2, 0, 1]


def test_retention_config_errors():
    with pytest.raises(UsageError, match="expected tags"):
        validate({"retention": [{"method": "ewx"}]})
    with pytest.raises(UsageError, match="did you mean 'weight'"):
        validate({"retention": [{"method": "ewc", "wieght": 1}]})
    with pytest.raises(UsageError, match="at most once"):
        validate({"retention": [{"method": "ewc"}, {"method": "ewc"}]})
    with pytest.raises(UsageError, match="needs retain"):
        validate({"trainer": {"max_forgetting": 2}, "retain": {"probe": None}})
    with pytest.raises(UsageError, match="replay needs data"):
        validate({"retention": [{"method": "replay", "share": 0.1}]})


def test_sequence_metrics():
    from retune.evaluate.forgetting import sequence_metrics

    R = [[80.0, 30.0, 20.0], [70.0, 90.0, 25.0], [60.0, 85.0, 70.0]]
    m = sequence_metrics(R, baseline=[50.0, 20.0, 10.0])
    assert m["average_accuracy"] == pytest.approx(215 / 3)
    assert m["backward_transfer"] == pytest.approx(((60 - 80) + (85 - 90)) / 2)
    assert m["forward_transfer"] == pytest.approx(((30 - 20) + (25 - 10)) / 2)


def test_distillation_keeps_no_copy_under_lora(tiny_model):
    model = _model(tiny_model, lora=True)
    assert Distillation.memory_bytes(model) == 0
    assert Distillation.memory_bytes(copy.deepcopy(_model(tiny_model))) > 0


def test_every_config_method_is_registered():
    """Each `method` of the retention config has a regularizer (or is data), and each regularizer a config."""
    import typing

    from retune.config.retention import RetentionMethod
    from retune.retention import DATA_METHODS, METHODS

    union = typing.get_args(RetentionMethod)[0]
    literals = {name for section in typing.get_args(union) for name in typing.get_args(section.model_fields["method"].annotation)}
    assert literals == set(METHODS) | DATA_METHODS
    assert not set(METHODS) & DATA_METHODS
    assert all(cls.name == name for name, cls in METHODS.items())  # the registry key is the penalty's and the state's key


def test_build_takes_each_methods_config_and_prepares_it(tiny_model, tok_fmt, examples):
    methods = [
        {"method": "ewc", "weight": 3.0, "samples": 5, "gamma": 0.5},
        {"method": "si", "weight": 2.0, "damping": 0.1, "warmup_steps": 1},
        {"method": "l2sp", "weight": 0.0},
        {"method": "distill", "weight": 1.5, "samples": 3, "prompts": ["new", "retain"], "batch_size": 2},
        {"method": "replay", "share": 0.1},
    ]
    cfg = validate({"retention": methods, "retain": {"tasks": [{"train": "x.jsonl"}]}}).retention
    ewc, si, l2sp, kd = build(cfg, _model(tiny_model, lora=True), _ctx(tok_fmt, examples))  # replay is data: no regularizer
    assert (type(ewc), ewc.weight, ewc.samples, ewc.gamma) == (EWC, 3.0, 5, 0.5) and ewc.fisher
    assert (type(si), si.damping, si.warmup_steps) == (SI, 0.1, 1) and si.importance
    assert type(l2sp) is L2SP and not l2sp.anchor  # weight 0: not prepared
    assert (type(kd), kd.on, kd.batch_size, kd.data) == (Distillation, ("new", "retain"), 2, examples[:3])


def test_end_stage_carries_each_method_into_the_next_stage(tiny_model, tok_fmt, examples):
    from retune.data.batching import collate
    from retune.models.loss import token_nll

    model = _model(tiny_model, lora=True)
    first, second = _ctx(tok_fmt, examples[:8]), _ctx(tok_fmt, examples[8:])
    kd, kd_all, l2sp, si = Distillation(1.0, samples=3), Distillation(1.0), L2SP(1.0), SI(1.0, warmup_steps=0)
    for reg in (kd, kd_all, l2sp, si):
        reg.prepare(model, first)
    # one SGD step of "the first stage"
    opt = torch.optim.SGD([p for _, p in trainable(model)], lr=1e-1)
    nll, n = token_nll(model, collate(examples[:4], tok_fmt[0].pad_token_id))
    (nll.sum() / n.sum()).backward()
    si.before_step(model)
    opt.step()
    si.after_step(model)
    assert l2sp.step_penalty(model).item() > 0 and not si.importance
    for reg in (kd, kd_all, l2sp, si):
        reg.end_stage(model, second)
    assert kd.data == examples[:3] + examples[8:11]  # the method's own `samples` of the finished stage
    assert kd_all.data == examples  # samples unset: all of them
    assert l2sp.step_penalty(model).item() == 0.0  # re-anchored at the stage's end
    assert si.importance and si.step_penalty(model).item() == 0.0  # importance from the path, anchored at the end


# ------------------------------------------------------------- the recipe end to end (tiny model)


def _retain(tiny_data):
    return {
        "tasks": [{"name": "repeat", "train": str(tiny_data["test"]), "template": {"prompt": "Repeat: {text}", "response": "{text}"}}],
        "probe": "general",
        "probe_samples": 4,
        "max_eval_samples": 6,
    }


def _run(tmp_path, tiny_model, tiny_data, name="cfg", **top):
    from conftest import tiny_config
    from helpers import write_config
    from retune.cli import run_train as train

    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs")
    cfg["eval"]["max_new_tokens"] = 6
    cfg.update(top)
    return train(str(write_config(tmp_path / f"{name}.yaml", cfg)))


def test_retain_and_every_method_in_one_run(tmp_path, tiny_model, tiny_data):
    methods = [
        {"method": "ewc", "weight": 1.0, "samples": 4},
        {"method": "si", "weight": 1.0, "warmup_steps": 2},
        {"method": "l2sp", "weight": 0.1},
        {"method": "distill", "weight": 1.0, "prompts": ["new", "retain"], "batch_size": 2},
        {"method": "replay", "share": 0.2, "samples": 8},
    ]
    run_dir, s = _run(tmp_path, tiny_model, tiny_data, retain=_retain(tiny_data), retention=methods)
    assert s["status"] == "completed"
    assert set(s["retention"]) == {"repeat", "general-text"}
    for row in s["retention"].values():
        assert row["delta"] == pytest.approx(row["final"] - row["base"])
    assert (run_dir / "base_retention.json").exists()
    assert set(s["retention_data"]) == {"repeat", "general-text"} and all(len(h) == 64 for h in s["retention_data"].values())
    from helpers import read_metrics

    logged = read_metrics(run_dir)
    assert any("penalty/ewc" in r for r in logged) and any("penalty/distill" in r for r in logged)


def test_max_forgetting_stops_and_rolls_back(tmp_path, tiny_model, tiny_data):
    from helpers import read_metrics

    run_dir, s = _run(
        tmp_path,
        tiny_model,
        tiny_data,
        retain={**_retain(tiny_data), "tasks": []},
        trainer={"max_steps": 6, "batch_size": 4, "lr": 5e-2, "precision": "fp32", "seed": 7, "eval_every": 1, "max_forgetting": 1e-6},
    )
    events = [r.get("event") for r in read_metrics(run_dir)]
    assert "max_forgetting" in events
    assert s["train"]["steps"] < 6


def test_stages_accuracy_matrix(tmp_path, tiny_model, tiny_data):
    stages = [
        {
            "name": "sentiment",
            "task": {
                "train": str(tiny_data["train"]),
                "test": str(tiny_data["test"]),
                "labels": ["negative", "positive"],
                "template": {"prompt": "Review: {text}\nSentiment?", "response": "{label}"},
            },
        },
        {
            "name": "repeat",
            "task": {
                "train": str(tiny_data["test"]),
                "template": {"prompt": "Repeat: {text}", "response": "{text}"},
                "max_eval_samples": 4,
            },
            "max_steps": 2,
        },
    ]
    run_dir, s = _run(
        tmp_path,
        tiny_model,
        tiny_data,
        stages=stages,
        retention=[{"method": "ewc", "weight": 1.0, "samples": 4}, {"method": "replay", "share": 0.2, "samples": 8}],
    )
    st = s["stages"]
    assert st["tasks"] == ["sentiment", "repeat"]
    assert len(st["R"]) == 2 and all(len(r) == 2 for r in st["R"])
    assert st["backward_transfer"] == pytest.approx(st["R"][1][0] - st["R"][0][0])
    assert (run_dir / "matrix.png").exists() and (run_dir / "stage-1" / "trainable.safetensors").exists()


def test_distill_into_a_smaller_student(tmp_path, tiny_model, tiny_data):
    from retune.recipes.distill import distill, layer_indices

    assert layer_indices(30, 3) == [0, 14, 29]
    run_dir, _ = _run(tmp_path, tiny_model, tiny_data, adapter={"type": "full"})
    s = distill(str(run_dir), str(tmp_path / "student"), 1, None, steps=2, lr=1e-3, temperature=2.0, weight=1.0)
    assert s["student"]["layers"] == 1
    assert s["student"]["params"] < s["teacher"]["params"]
    assert "accuracy" in s["student"] and (tmp_path / "student" / "model" / "config.json").exists()
