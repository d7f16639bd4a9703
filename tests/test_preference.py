"""Preference stage types (issue 14): retune's losses and gradients equal TRL's on the same batch and
model; DPO runs in retune's own loop (accumulation, resume, stages, retention as for sft); a bad
preference row is one line and exit 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import retune.session as run_mod
from conftest import make_reviews, tiny_config, write_jsonl
from helpers import InterruptAt, losses, read_metrics, write_config
from retune.cli import run_train as train
from retune.config import DataConfig, validate
from retune.objectives import objective_for
from retune.objectives.pairs import PairText, encode_pair, pair_batch, reference_logps, sequence_logps

PROMPT = "Review: {text}\nSentiment?"


def _pairs(n: int, seed: int) -> list[dict]:
    """Real preferences on the tiny task: the right label over the wrong one."""
    flip = {"positive": "negative", "negative": "positive"}
    return [{"prompt": PROMPT.format(text=r["text"]), "chosen": r["label"], "rejected": flip[r["label"]]} for r in make_reviews(n, seed)]


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    return {"train": write_jsonl(d / "train.jsonl", _pairs(48, 1)), "test": write_jsonl(d / "test.jsonl", _pairs(16, 2))}


def _load(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny_model)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "dpo",
    [
        {"loss_type": "sigmoid", "beta": 0.1},
        {"loss_type": "robust", "beta": 0.3, "label_smoothing": 0.1},
        {"loss_type": "ipo"},
        {"loss_type": "hinge", "beta": 2.0},
    ],
    ids=lambda d: d["loss_type"],
)
def test_dpo_loss_and_gradients_equal_trl(tmp_path, tiny_model, dpo):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = _pairs(6, 3)
    records[0]["chosen"] = "positive and truly great"  # answers of different lengths: padding and ipo's averaging matter
    policy, tok = _load(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():  # move off the reference so the log-ratios (and the ipo / hinge branches) are not all zero
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reference, _ = _load(tiny_model)
    mine = copy.deepcopy(policy)
    args = DPOConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None, **{**dpo, "loss_type": [dpo["loss_type"]]}
    )
    trainer = DPOTrainer(policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    trl_batch = trainer.data_collator(rows)
    trainer.model.train()
    trl_loss = trainer._compute_loss(trainer.model, trl_batch, False)
    trl_loss.backward()

    obj = objective_for(validate({"objective": {"type": "dpo", **dpo}}).objective)
    from retune.data.templates import Formatter

    fmt = Formatter(tok, DataConfig(format="plain", max_length=64))
    pairs = [encode_pair(fmt, PairText(r["prompt"], None, None, r["chosen"], r["rejected"]), "t") for r in records]
    # the same tokens as TRL's preprocessing (prompt, then answer + EOS)
    assert [p.input_ids for p in pairs] == [r["prompt_ids"] + r["chosen_ids"] for r in rows]
    assert [p.rejected.input_ids for p in pairs] == [r["prompt_ids"] + r["rejected_ids"] for r in rows]
    ref_model, _ = _load(tiny_model)
    reference_logps(ref_model, pairs, tok.pad_token_id, 4, _no_autocast)
    mine.train()
    loss, metrics = obj.loss(mine, pair_batch(pairs, tok.pad_token_id), 1.0 / len(pairs))
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert metrics["reward_accuracy"] == pytest.approx(trainer._metrics["train"]["rewards/accuracies"][-1], abs=1e-6)
    assert metrics["reward_margin"] == pytest.approx(trainer._metrics["train"]["rewards/margins"][-1], abs=1e-5)
    theirs, ours = _grads(trainer.model), _grads(mine)
    assert theirs.keys() == ours.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def _trl_self(**kw):
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), **kw)


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_reference_free_losses_and_gradients_equal_trl(tiny_model, kind):
    """ORPO's odds-ratio term (TRL's ORPOTrainer.odds_ratio_loss) and SimPO's loss (TRL's CPO with
    loss_type=simpo) on TRL's per-token averaged log-probabilities (get_batch_logps over full logits)."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from retune.data.templates import Formatter

    records = _pairs(5, 4)
    records[1]["rejected"] = "negative and dull"
    model, tok = _load(tiny_model)
    fmt = Formatter(tok, DataConfig(format="plain", max_length=64))
    pairs = [encode_pair(fmt, PairText(r["prompt"], None, None, r["chosen"], r["rejected"]), "t") for r in records]
    batch = pair_batch(pairs, tok.pad_token_id)
    cfg = validate({"objective": {"type": kind, "beta": 0.7}}).objective
    obj = objective_for(cfg)

    # TRL: full logits, its own log-prob gather, its own loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    trl_logps = ORPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    c, r = trl_logps.chunk(2)
    if kind == "orpo":
        terms, *_ = ORPOTrainer.odds_ratio_loss(_trl_self(beta=0.7), c, r)
        trl_loss = (-c - terms).mean()  # retune's NLL term: the chosen answer's per-token NLL (see docs)
    else:
        me = _trl_self(beta=0.7, alpha=0.0, loss_type="simpo", simpo_gamma=cfg.gamma, label_smoothing=0.0)
        trl_loss = CPOTrainer.cpo_loss(me, c, r)[0].mean()
    trl_loss.backward()
    theirs = _grads(model)
    model.zero_grad()

    loss, _ = obj.loss(model, batch, 1.0 / len(pairs))
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    ours = _grads(model)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def test_sequence_logps_equal_full_logits(tiny_model):
    """Only answer positions go through the head; the log-probabilities equal the full-logits gather."""
    from retune.data.templates import Formatter

    model, tok = _load(tiny_model)
    fmt = Formatter(tok, DataConfig(format="chat", max_length=64))
    records = _pairs(3, 5)
    pairs = [encode_pair(fmt, PairText(r["prompt"], None, None, r["chosen"], r["rejected"]), "t") for r in records]
    batch = pair_batch(pairs, tok.pad_token_id)
    logps, n = sequence_logps(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    gathered = torch.log_softmax(logits[:, :-1], -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
    torch.testing.assert_close(logps, (gathered * (labels != -100)).sum(1), atol=1e-5, rtol=1e-5)
    assert n.tolist() == (labels != -100).sum(1).float().tolist()


# ---------------------------------------------------------------- the loop, end to end


def _config(tmp_path, tiny_model, tiny_data, pair_files, name="dpo", objective=None, **sections):
    trainer = {"max_steps": 4, "eval_every": 2} | sections.pop("trainer", {})
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer=trainer, **sections)
    cfg["data"] = {"train": str(pair_files["train"]), "test": str(pair_files["test"]), "max_length": 64, "labels": ["negative", "positive"]}
    cfg["objective"] = objective or {"type": "dpo", "beta": 0.5}
    cfg["retain"] = {"probe": "general", "probe_samples": 4}
    return str(write_config(tmp_path / f"{name}.yaml", cfg))


def test_dpo_run_trains_logs_rewards_and_measures_forgetting(tmp_path, tiny_model, tiny_data, pair_files):
    run_dir, s = train(_config(tmp_path, tiny_model, tiny_data, pair_files))
    rows = read_metrics(run_dir)
    first = next(r for r in rows if r.get("step") == 1 and "loss" in r)
    # the reference is the model as training starts: at step 1 every log-ratio is 0, the loss log 2
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    val = [r for r in rows if "val_reward_accuracy" in r]
    assert val and 0.0 <= val[-1]["val_reward_accuracy"] <= 1.0
    pref = s["preference"]
    assert pref["stage_type"] == "dpo" and pref["pairs"] > 0 and pref["reward_accuracy"] > 0.5  # lr 1e-2 learns the labels
    assert s["base"] and s["final"] and "general-text" in s["retention"]  # forgetting measured as for sft


def test_dpo_grad_accumulation_1x4_equals_4x1(tmp_path, tiny_model, tiny_data, pair_files):
    big, _ = train(_config(tmp_path, tiny_model, tiny_data, pair_files, "big", trainer={"batch_size": 4, "grad_accum": 1}))
    small, _ = train(_config(tmp_path, tiny_model, tiny_data, pair_files, "small", trainer={"batch_size": 1, "grad_accum": 4}))
    lb, ls = losses(big), losses(small)
    assert lb.keys() == ls.keys()
    for step in lb:
        assert lb[step] == pytest.approx(ls[step], abs=1e-5), step


def test_resume_mid_dpo_equals_uninterrupted(tmp_path, tiny_model, tiny_data, pair_files, monkeypatch):
    trainer = {"max_steps": 6, "save_every": 100, "eval_every": None}
    whole, _ = train(_config(tmp_path, tiny_model, tiny_data, pair_files, "whole", trainer=trainer))
    monkeypatch.setattr(run_mod, "LiveProgress", InterruptAt(3))
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, tiny_model, tiny_data, pair_files, "cut", trainer=trainer))
    cut = next(p for p in (tmp_path / "runs").iterdir() if p != whole)
    monkeypatch.setattr(run_mod, "LiveProgress", InterruptAt(-1))
    resumed, _s = train(None, resume=str(cut))
    lw, lr = losses(whole), losses(resumed)
    assert set(lr) == set(range(1, 7)), (lw, lr)
    for step in range(4, 7):
        assert lr[step] == pytest.approx(lw[step], abs=1e-5), step


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_reference_free_stage_types_train(tmp_path, tiny_model, tiny_data, pair_files, kind):
    run_dir, s = train(_config(tmp_path, tiny_model, tiny_data, pair_files, kind, objective={"type": kind}, trainer={"eval_every": None}))
    assert s["preference"]["stage_type"] == kind
    assert all(v == v for v in losses(run_dir).values())  # finite (not NaN)


def test_sft_then_dpo_stages_with_pairs_from_other_answers(tmp_path, tiny_model, tiny_data, pair_files):
    template = {"prompt": PROMPT, "response": "{label}"}
    sentiment = {"train": str(tiny_data["train"]), "test": str(tiny_data["test"]), "labels": ["negative", "positive"], "template": template}
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs")
    cfg["stages"] = [
        {"name": "sft", "task": sentiment, "max_steps": 2},
        {"name": "dpo", "type": "dpo", "pairs": "other", "task": {**sentiment, "name": "prefer"}, "max_steps": 2},
    ]
    _run_dir, s = train(str(write_config(tmp_path / "stages.yaml", cfg)))
    assert s["stages"]["tasks"] == ["sft", "prefer"] and len(s["stages"]["R"]) == 2
    assert s["preference"]["prefer"]["stage_type"] == "dpo"
    # a two-label task: another record's answer is often the same label; those ties were dropped
    assert 0 < s["preference"]["prefer"]["pairs"] < 6  # of the 6 validation records


def test_a_row_missing_rejected_is_one_line_and_exit_2(tmp_path, tiny_model, tiny_data, pair_files):
    rows = _pairs(8, 6)
    del rows[4]["rejected"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    path = _config(tmp_path, tiny_model, tiny_data, {"train": bad, "test": pair_files["test"]})
    r = subprocess.run([sys.executable, "-m", "retune.cli", "train", path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "record" in lines[0] and "'rejected'" in lines[0] and "columns" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_conversational_pairs_encode_with_the_chat_template(tiny_model):
    from retune.data.dataset import TaskData
    from retune.data.templates import Formatter
    from retune.models.tasks import CAUSAL_LM
    from retune.objectives.pairs import PAIR_TEMPLATE

    _, tok = _load(tiny_model)
    fmt = Formatter(tok, DataConfig(max_length=64))
    row = {
        "prompt": [{"role": "user", "content": "Review: great film\nSentiment?"}],
        "chosen": [{"role": "assistant", "content": "positive"}],
        "rejected": [{"role": "assistant", "content": "negative"}],
    }
    task = TaskData("t", [row], [], [], PAIR_TEMPLATE, None, "accuracy")
    (pair,) = objective_for(validate({"objective": {"type": "dpo"}}).objective).encode_task(CAUSAL_LM, fmt, task, [row], "t", 0)
    text = tok.decode(pair.input_ids)
    assert text.startswith("<|im_start|>user\nReview: great film") and text.endswith("<|im_start|>assistant\npositive<|im_end|>\n")
    assert tok.decode(pair.rejected.input_ids).endswith("assistant\nnegative<|im_end|>\n")


def test_stage_type_config_errors_name_the_key():
    from retune.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'beta'"):
        validate({"objective": {"type": "dpo", "bta": 1}})
    with pytest.raises(UsageError, match="loss_type: robust"):
        validate({"objective": {"type": "dpo", "label_smoothing": 0.1}})
    with pytest.raises(UsageError, match="stages\\[i\\].type"):
        validate({"objective": {"type": "dpo"}, "stages": [{"task": {"train": "rotten-tomatoes"}}]})
    assert validate({"stages": [{"task": {"train": "rotten-tomatoes"}}]}).stages[0].type == "sft"  # old configs keep working


def test_dpo_under_two_processes_equals_one(tmp_path, tiny_model, tiny_data, pair_files):
    """--nproc 2: rank 0 takes 2 pairs of each global batch of 3, rank 1 one; the reference log-probs,
    losses, reward metrics and validation are those of one process."""
    from test_distributed import _cli, _run_dir

    trainer = {"batch_size": 1, "grad_accum": 3, "max_steps": 7, "eval_every": 4, "threads": 1}
    path = _config(tmp_path, tiny_model, tiny_data, pair_files, "two", trainer=trainer)
    one, _ = train(path)
    two = _run_dir(_cli(["train", path, "--nproc", "2"]))
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() == set(range(1, 8))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-4), step
    for keys in (("reward_margin", "reward_accuracy"), ("val_loss", "val_reward_accuracy", "val_reward_margin")):
        v1 = [r[k] for r in read_metrics(one) if all(k in r for k in keys) for k in keys]
        v2 = [r[k] for r in read_metrics(two) if all(k in r for k in keys) for k in keys]
        assert v1 and v2 == pytest.approx(v1, abs=1e-4), keys


@pytest.mark.parametrize("adapter", [{"type": "full"}, {"type": "qlora"}], ids=lambda a: a["type"])
def test_dpo_under_full_fine_tuning_and_qlora(tmp_path, tiny_model, tiny_data, pair_files, adapter):
    """No reference copy under any adapter kind: at step 1 the policy is the reference (loss log 2)."""
    run_dir, s = train(_config(tmp_path, tiny_model, tiny_data, pair_files, adapter["type"], adapter=adapter, trainer={"eval_every": None}))
    assert losses(run_dir)[1] == pytest.approx(0.693147, abs=1e-4)
    assert s["preference"]["pairs"] > 0


def test_pairs_from_the_model_itself(tmp_path, tiny_model, tiny_data):
    """pairs: self: k samples per prompt scored by the task's metric against its reference, best vs
    worst, ties dropped and counted; then DPO trains on them as on any pairs."""
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={"max_steps": 2, "eval_every": None})
    cfg["data"] |= {"max_train_samples": 12, "max_eval_samples": 6}
    cfg["data"].pop("labels")
    cfg["eval"] |= {"max_new_tokens": 4, "metric": "chrf", "scoring": "generate"}
    cfg["objective"] = {"type": "dpo", "pairs": "self", "samples": 3}
    cfg["retain"] = {"probe": None}
    _, s = train(str(write_config(tmp_path / "self.yaml", cfg)))
    made = s["preference"]["self_made_pairs"]
    assert [m["prompts"] for m in made] == [12, 6]  # training prompts, then validation prompts
    assert all(m["pairs"] + m["dropped"] == m["prompts"] and m["pairs"] > 0 for m in made)
    assert s["preference"]["pairs"] == made[1]["pairs"]
