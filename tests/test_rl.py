"""KTO and GRPO stage types (issue 14): retune's losses and gradients equal TRL's on the same batch and
model (GRPO: on TRL's own sampled completions, with TRL's advantages); both train in retune's loop;
a KTO row without a label is one line and exit 2."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from conftest import make_reviews, tiny_config, write_jsonl
from helpers import losses, read_metrics, write_config
from retune.cli import run_train as train
from retune.config import DataConfig, validate
from retune.objectives import objective_for

PROMPT = "Review: {text}\nSentiment?"


def _unpaired(n: int, seed: int) -> list[dict]:
    """Real labels on the tiny task: a review's true sentiment is desirable, the other one not."""
    flip = {"positive": "negative", "negative": "positive"}
    rows = []
    for i, r in enumerate(make_reviews(n, seed)):
        good = i % 3 != 2
        rows.append({"prompt": PROMPT.format(text=r["text"]), "completion": r["label"] if good else flip[r["label"]], "label": good})
    return rows


def _load(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_model)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _perturbed(tiny_model):
    policy, tok = _load(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():  # move off the reference so the log-ratios are not all zero
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy, tok


def _assert_same_grads(theirs: dict, ours: dict) -> None:
    assert theirs.keys() == ours.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "kto",
    [{"loss_type": "kto", "beta": 0.3, "undesirable_weight": 1.5}, {"loss_type": "apo_zero_unpaired", "beta": 0.2}],
    ids=lambda d: d["loss_type"],
)
def test_kto_loss_and_gradients_equal_trl(tmp_path, tiny_model, kto):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from retune.data.templates import Formatter
    from retune.objectives.kto import KTO_TEMPLATE, encode_unpaired

    records = _unpaired(6, 3)
    records[1]["completion"] = "positive and truly great"  # answers of different lengths: padding matters
    policy, tok = _perturbed(tiny_model)
    mine = copy.deepcopy(policy)
    reference, _ = _load(tiny_model)
    args = KTOConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None, per_device_train_batch_size=8, **kto
    )
    trainer = KTOTrainer(policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    trainer.model.train()
    trl_loss = trainer._compute_loss(trainer.model, trainer.data_collator(rows), False)
    trl_loss.backward()

    obj = objective_for(validate({"objective": {"type": "kto", **kto}}).objective)
    examples = encode_unpaired(Formatter(tok, DataConfig(format="plain", max_length=64)), KTO_TEMPLATE, records, "t")
    # the same tokens as TRL's preprocessing, and the same mismatched (KL) sequences
    assert [e.input_ids for e in examples] == [r["prompt_ids"] + r["completion_ids"] for r in rows]
    if kto["loss_type"] == "kto":
        assert [e.kl.input_ids for e in examples] == [r["prompt_ids"] + r["KL_completion_ids"] for r in rows]
    ref_model, _ = _load(tiny_model)
    obj.prepare(ref_model, examples, tok.pad_token_id, 4, _no_autocast)
    mine.train()
    obj.before_step(mine, examples, tok.pad_token_id, _no_autocast)
    loss, metrics = obj.loss(mine, obj.collate(examples, tok.pad_token_id), 1.0 / len(examples))
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    if kto["loss_type"] == "kto":
        assert metrics["kl"] == pytest.approx(trainer._metrics["train"]["kl"][-1], abs=1e-5)
    _assert_same_grads(_grads(trainer.model), _grads(mine))


def _completion_reward(completions: list[str], references: list[str]) -> list[float]:
    """A verifiable reward with spread on the untrained tiny model: sentence chrF against the reference."""
    from retune.objectives.rewards import metric_rewards

    return metric_rewards("chrf", completions, references)


@pytest.mark.parametrize(
    "grpo",
    [
        {"beta": 0.0, "loss_type": "grpo"},
        {"beta": 0.0, "loss_type": "dr_grpo"},
        {"beta": 0.2, "loss_type": "grpo"},
        {"beta": 0.2, "loss_type": "dr_grpo"},
    ],
    ids=lambda d: f"{d['loss_type']}-beta{d['beta']}",
)
def test_grpo_advantages_loss_and_gradients_equal_trl(tmp_path, tiny_model, grpo):
    """TRL samples and scores the completions (its _generate_and_score_completions); retune rewards
    the same completions, computes its advantages and its loss on the same tokens."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from retune.data.templates import Encoded
    from retune.objectives.rewards import group_advantages

    policy, tok = _perturbed(tiny_model)
    # TRL pads prompts on the left and scores without position ids: prompts of one token length keep
    # the positions the same as in retune's right-padded batch
    candidates = [{"prompt": PROMPT.format(text=r["text"]), "reference": f"{r['label']} film"} for r in make_reviews(40, 7)]
    by_length: dict[int, list[dict]] = {}
    for r in candidates:
        by_length.setdefault(len(tok(r["prompt"]).input_ids), []).append(r)
    records = max(by_length.values(), key=len)[:3]
    assert len(records) == 3
    mine = copy.deepcopy(policy)

    def reward(prompts, completions, reference, **kw):
        return _completion_reward(completions, reference)

    args = GRPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=12,
        num_generations=4,
        max_completion_length=6,
        temperature=0.9,
        seed=3,
        **grpo,
    )
    trainer = GRPOTrainer(policy, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one batch here
    torch.manual_seed(1)  # TRL's reference (beta > 0) is loaded from the model's path: the unperturbed model
    out = trainer._generate_and_score_completions([records[i // 4] for i in range(12)])
    trl_loss = trainer._compute_loss(trainer.model, out)
    trl_loss.backward()

    cfg = validate({"objective": {"type": "grpo", "generations": 4, "temperature": 0.9, "max_new_tokens": 6, **grpo}}).objective
    obj = objective_for(cfg)
    obj.max_new = 6
    texts = tok.batch_decode(out["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(_completion_reward(texts, [records[i // 4]["reference"] for i in range(12)]))
    assert rewards.std() > 0  # the groups disagree: the advantages are not all zero
    adv = group_advantages(rewards, 4, scale=True)
    torch.testing.assert_close(adv, out["advantages"], atol=1e-6, rtol=1e-6)
    rows = []  # the same tokens: each prompt + its completion up to the mask's end
    for p, pm, c, cm in zip(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"], strict=True):
        prompt, answer = p[pm.bool()].tolist(), c[cm.bool()].tolist()
        rows.append(Encoded(prompt + answer, [-100] * len(prompt) + answer, len(prompt)))
    from retune.data.batching import collate
    from retune.objectives.grpo import token_logps

    ref = None
    if grpo["beta"]:  # the same batch includes TRL's reference log-probabilities; retune's own are close to them
        ref = out["ref_per_token_logps"][out["completion_mask"].bool()]
        lp, _ = token_logps(_load(tiny_model)[0], collate(rows, tok.pad_token_id), 0.9)
        torch.testing.assert_close(lp.detach(), ref, atol=1e-4, rtol=1e-4)
    mine.train()
    per_prompt, _ = obj.group_terms(mine, collate(rows, tok.pad_token_id), adv, ref, 4)
    loss = per_prompt.sum() / 3
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    _assert_same_grads(_grads(trainer.model), _grads(mine))


# ---------------------------------------------------------------- the loop, end to end


def _config(tmp_path, tiny_model, tiny_data, name, objective, data=None, **sections):
    trainer = {"max_steps": 3, "eval_every": 3} | sections.pop("trainer", {})
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer=trainer, **sections)
    if data is not None:
        cfg["data"] = data
    cfg["objective"] = objective
    cfg["retain"] = {"probe": "general", "probe_samples": 4}
    return str(write_config(tmp_path / f"{name}.yaml", cfg))


@pytest.fixture(scope="module")
def kto_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kto")
    return {"train": str(write_jsonl(d / "train.jsonl", _unpaired(24, 1))), "test": str(write_jsonl(d / "test.jsonl", _unpaired(9, 2)))}


def test_kto_run_trains_logs_kl_and_measures_forgetting(tmp_path, tiny_model, tiny_data, kto_files):
    data = {**kto_files, "max_length": 64, "labels": ["negative", "positive"]}
    run_dir, s = train(_config(tmp_path, tiny_model, tiny_data, "kto", {"type": "kto", "beta": 0.5}, data))
    rows = read_metrics(run_dir)
    first = next(r for r in rows if r.get("step") == 1 and "loss" in r)
    assert first["loss"] == pytest.approx(0.5, abs=1e-5)  # the policy is the reference at step 1: 1 - sigmoid(0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    pref = s["preference"]
    assert pref["stage_type"] == "kto" and 0 < pref["desirable"] <= pref["examples"]
    assert s["base"] and s["final"] and "general-text" in s["retention"]
    assert pref["curves"]["train"]["step"] == [1, 2, 3] and len(pref["curves"]["train"]["kl"]) == 3


def test_kto_grad_accumulation_1x4_equals_4x1(tmp_path, tiny_model, tiny_data, kto_files):
    """z0 is taken over the optimizer step's whole batch: the split into micro-batches does not matter."""
    data = {**kto_files, "max_length": 64, "labels": ["negative", "positive"]}
    obj = {"type": "kto", "beta": 0.5}
    big, _ = train(
        _config(tmp_path, tiny_model, tiny_data, "big", obj, data, trainer={"batch_size": 4, "grad_accum": 1, "eval_every": None})
    )
    small, _ = train(
        _config(tmp_path, tiny_model, tiny_data, "small", obj, data, trainer={"batch_size": 1, "grad_accum": 4, "eval_every": None})
    )
    lb, ls = losses(big), losses(small)
    assert lb.keys() == ls.keys()
    for step in lb:
        assert lb[step] == pytest.approx(ls[step], abs=1e-5), step


def test_a_kto_row_without_label_is_one_line_and_exit_2(tmp_path, tiny_model, tiny_data, kto_files):
    rows = _unpaired(8, 6)
    del rows[3]["label"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    path = _config(
        tmp_path, tiny_model, tiny_data, "bad", {"type": "kto"}, {"train": str(bad), "test": kto_files["test"], "max_length": 64}
    )
    r = subprocess.run([sys.executable, "-m", "retune.cli", "train", path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "record" in lines[0] and "no 'label'" in lines[0] and "columns: {label:" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_grpo_run_samples_rewards_and_logs_curves(tmp_path, tiny_model, tiny_data):
    """GRPO on the tiny sentiment task, reward = the task's accuracy of each sampled answer; the held-out
    reward of greedy answers is in summary.json with its interval, and the curves per step."""
    objective = {"type": "grpo", "generations": 3, "beta": 0.1, "max_new_tokens": 3}
    path = _config(
        tmp_path,
        tiny_model,
        tiny_data,
        "grpo",
        objective,
        trainer={"max_steps": 2, "eval_every": 2, "batch_size": 2},
        adapter={"type": "lora", "r": 4},
    )
    run_dir, s = train(path)
    rows = [r for r in read_metrics(run_dir) if "loss" in r and "step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward"] <= 1.0 and r["kl"] >= 0.0 for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at B = 0: the policy is the reference
    pref = s["preference"]
    assert pref["stage_type"] == "grpo" and pref["prompts"] > 0
    low, high = pref["reward_interval"]
    assert low <= pref["reward"] <= high
    assert pref["curves"]["train"]["reward"] == [r["reward"] for r in rows]
    assert pref["curves"]["validation"]["step"] == [2]


def test_grpo_config_errors_name_the_key():
    from retune.errors import UsageError

    with pytest.raises(UsageError, match="format_pattern"):
        validate({"objective": {"type": "grpo", "format_weight": 0.5}})
    with pytest.raises(UsageError, match="did you mean 'generations'"):
        validate({"objective": {"type": "grpo", "generation": 4}})
    with pytest.raises(UsageError, match="regular expression"):
        validate({"objective": {"type": "grpo", "format_pattern": "(", "format_weight": 1}})


def test_plan_counts_the_rows_each_stage_type_puts_through_the_forward(tmp_path, tiny_model, tiny_data, kto_files):
    """retune plan sizes a micro-batch by its sequences: a pair is two, a grpo prompt its generations."""
    from retune.plan.shapes import batch_shape

    def shape(objective, data=None):
        cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"batch_size": 4})
        if data is not None:
            cfg["data"] = data
        cfg["objective"] = objective
        return batch_shape(validate(cfg))

    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "neutral"} for r in _unpaired(12, 3)]
    pair_data = {"train": str(write_jsonl(tmp_path / "pairs.jsonl", pairs)), "max_length": 64}
    sft, dpo = shape({"type": "sft"}), shape({"type": "dpo"}, pair_data)
    assert (sft.size, dpo.size) == (4, 8) and sft.source == dpo.source == "data"
    grpo = shape({"type": "grpo", "generations": 3, "max_new_tokens": 5})
    assert grpo.size == 12 and grpo.labelled == 12 * 5
    assert shape({"type": "kto"}, {**kto_files, "max_length": 64}).size == 4


def test_plan_holds_grpos_sampling_in_the_training_phase(tmp_path, tiny_model, tiny_data, monkeypatch):
    """grpo generates its answers before each step: on the CPU the malloc keeps what that pass held
    (measured on examples/grpo-sentiment.yaml: +820 MB in the first step's sampling)."""
    import importlib

    from retune import plan
    from retune.plan.scoring import Job

    est = importlib.import_module("retune.plan.estimate")  # the module (retune.plan.estimate is also its function)

    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"batch_size": 4})
    cfg["objective"] = {"type": "grpo", "generations": 4, "max_new_tokens": 5}
    cfg = validate(cfg)
    p = plan.estimate(cfg)
    job = est._rollout(cfg, plan.batch_shape(cfg))
    assert job == Job("grpo sampling", "generate", 16, p.batch["seq_len"] - 5, 5)
    monkeypatch.setattr(est, "_rollout", lambda cfg, b: None)
    assert plan.estimate(cfg).phases["train"] < p.phases["train"]
