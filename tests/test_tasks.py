"""Multi-task recipe on the tiny Llama; sequence classification on a tiny BERT and seq2seq on a tiny T5,
both built in-process (no pretrained T5 ships offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FILLER, NEGATIVE, POSITIVE, make_reviews, tiny_config, write_jsonl
from helpers import write_config
from retune.cli import run_train as train
from retune.data.batching import collate
from retune.data.templates import Encoded
from retune.errors import UsageError
from retune.inference.tuned import evaluate
from retune.models.loss import token_nll, training_loss
from retune.models.tasks import CAUSAL_LM, SEQ2SEQ, SEQ_CLS, TASK_TYPES, task_type, task_type_of

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<pad>", "</s>", "<unk>", "review", ":", "sentiment", "?"]
WORDS += POSITIVE + NEGATIVE + FILLER + ["positive", "negative"]


def _word_tokenizer(special: dict[str, str], post: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token=special["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if post == "bert":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    else:  # T5 appends </s>
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 6)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = _word_tokenizer({"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}, "bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    tok = _word_tokenizer({"unk_token": "<unk>", "pad_token": "<pad>", "eos_token": "</s>"}, "t5")
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(WORDS),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=5,
        eos_token_id=6,
        decoder_start_token_id=5,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _data(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", make_reviews(96, seed=1)),
        "test": write_jsonl(tmp_path / "test.jsonl", make_reviews(32, seed=2)),
    }


def _run(tmp_path, base: Path, **sections):
    cfg = tiny_config(base, _data(tmp_path), tmp_path / "runs", **sections)
    return train(str(write_config(tmp_path / "cfg.yaml", cfg)))


def test_seq_cls_trains_head_and_lora(tmp_path, tiny_bert):
    # A random tiny encoder learns little in a few steps; what is checked here is the mechanism (LoRA on
    # query/value + a trained head, classifier scoring, save and reload). Accuracy on real data:
    # examples/classify-minilm.yaml.
    adapter = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}
    run_dir, summary = _run(
        tmp_path, tiny_bert, model={"base": str(tiny_bert), "task": "seq_cls"}, adapter=adapter, trainer={"max_steps": 8, "lr": 1e-2}
    )
    final = summary["final"]["train"]
    assert summary["scoring"] == "classifier" and final["n_test"] == 32
    assert final["accuracy"] * 32 == pytest.approx(round(final["accuracy"] * 32))  # a share of the 32 test reviews
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    init = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).classifier.weight
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        head = [k for k in f.keys() if "classifier" in k and k.endswith("weight")]
        lora = [k for k in f.keys() if "lora_B" in k]
        assert head and lora, list(f.keys())
        assert not torch.allclose(f.get_tensor(head[0]), init)  # the head was trained (peft modules_to_save)
        assert all(f.get_tensor(k).abs().sum() > 0 for k in lora)  # and the LoRA updates moved off zero
    assert evaluate(str(run_dir))["train"]["accuracy"] == pytest.approx(summary["final"]["train"]["accuracy"])


def test_seq2seq_lora_on_q_v(tmp_path, tiny_t5):
    adapter = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"]}
    run_dir, summary = _run(
        tmp_path,
        tiny_t5,
        model={"base": str(tiny_t5), "task": "seq2seq"},
        adapter=adapter,
        data={"format": "plain"},
        eval={"max_new_tokens": 3, "batch_size": 8},
        trainer={"max_steps": 40, "lr": 3e-2},
    )
    assert summary["scoring"] == "generate"
    base, final = summary["base"]["train"], summary["final"]["train"]
    # the random tiny T5 learns to answer with a label word (accuracy from 0), not yet the sentiment
    assert final["val_loss"] < base["val_loss"] / 2 and final["accuracy"] > base["accuracy"], (base, final)
    assert evaluate(str(run_dir))["train"]["accuracy"] == pytest.approx(final["accuracy"])


def test_multitask_recipe_scores_every_task(tmp_path, tiny_model):
    data = _data(tmp_path)
    echo = write_jsonl(tmp_path / "echo.jsonl", [{"w": r["text"].split()[0], "text": r["text"]} for r in make_reviews(40, seed=3)])
    sentiment = {
        "name": "sentiment",
        "train": str(data["train"]),
        "test": str(data["test"]),
        "template": {"prompt": "Review: {text}\nSentiment?", "response": "{label}"},
        "labels": ["negative", "positive"],
        "weight": 3,
    }
    first_word = {
        "name": "first-word",
        "train": str(echo),
        "template": {"prompt": "First word of: {text}", "response": "{w}"},
        "metric": "exact_match",
        "weight": 1,
        "loss_weight": 0.5,
        "max_new_tokens": 4,
        "stop": ["\n"],
    }
    held_out = {"name": "held-out", "test": str(data["test"]), "template": sentiment["template"], "labels": sentiment["labels"]}
    cfg = tiny_config(tiny_model, data, tmp_path / "runs")
    cfg["data"] = {"max_length": 64, "epoch_size": 40, "tasks": [sentiment, first_word, held_out]}
    cfg["trainer"].update(max_steps=12)
    run_dir, summary = train(str(write_config(tmp_path / "mt.yaml", cfg)))
    names = ["sentiment", "first-word", "held-out"]
    assert list(summary["base"]) == names and list(summary["final"]) == names
    assert "exact_match" in summary["final"]["first-word"] and "accuracy" in summary["final"]["sentiment"]
    info = summary["tasks"]
    assert info["sentiment"]["share"] == pytest.approx(0.75) and info["sentiment"]["per_epoch"] == 30
    assert info["held-out"]["share"] is None and info["held-out"]["train_examples"] == 0
    assert summary["scoring"] == {"sentiment": "likelihood", "first-word": "generate", "held-out": "likelihood"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["stage"], r["task"]) for r in rows if r.get("event") == "task_eval"]
    assert evals == [("base model", n) for n in names] + [("tuned model", n) for n in names]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final"]["held-out"]["n_test"] == 32


def test_loss_weights_scale_rows(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ex = [Encoded([5, 6, 7, 8], [-100, -100, 7, 8], 2, weight=w) for w in (2.0, 0.5)]
    batch = collate(ex, 0)
    assert batch["weights"].tolist() == [2.0, 0.5]
    weighted, nll = training_loss(model, batch, batch["weights"] / 4)
    assert weighted.item() == pytest.approx((nll * torch.tensor([2.0, 0.5]) / 4).sum().item(), rel=1e-5)
    assert "weights" not in collate([Encoded([5, 6], [-100, 6], 1)], 0)  # plain batches are unchanged


# ---------------------------------------------------------------- the task type objects


def _tiny(kind: str):
    """(model, LoRA target modules) of a tiny random model of each task type, built in-process."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if kind == "causal_lm":
        cfg = LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
        )
        return LlamaForCausalLM(cfg), ["q_proj", "v_proj"]
    if kind == "seq_cls":
        cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3)
        return BertForSequenceClassification(cfg), ["query", "value"]
    cfg = T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0
    )
    return T5ForConditionalGeneration(cfg), ["q", "v"]


def test_task_types_round_trip_name_and_object():
    from typing import get_args

    import peft
    import transformers

    from retune.config import ModelConfig

    assert set(TASK_TYPES) == set(get_args(ModelConfig.model_fields["task"].annotation))  # every config name has an object
    for name, kind in TASK_TYPES.items():
        assert task_type(name) is kind and kind.name == name and repr(kind) == f"<task type {name}>"
        assert peft.TaskType(kind.peft_task_type).value == kind.peft_task_type
        assert kind.auto_class() is getattr(transformers, kind.auto_class_name)
    assert [CAUSAL_LM.has_lm_head, SEQ_CLS.has_lm_head, SEQ2SEQ.has_lm_head] == [True, False, False]  # the text probe: causal LMs only
    assert SEQ_CLS.load_kwargs(["neg", "pos"])["id2label"] == {0: "neg", 1: "pos"} and CAUSAL_LM.load_kwargs() == {}


def test_unknown_task_type_is_a_usage_error():
    with pytest.raises(UsageError, match="model.task 'token_cls' is not a task type .*causal_lm, seq_cls, seq2seq"):
        task_type("token_cls")


@pytest.mark.parametrize("name", ["causal_lm", "seq_cls", "seq2seq"])
def test_task_type_of_a_model_bare_and_in_peft(name):
    import peft

    model, targets = _tiny(name)
    kind = task_type(name)
    assert task_type_of(model) is kind
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=targets, task_type=kind.peft_task_type))
    assert task_type_of(wrapped) is kind
    wrapped.eval()  # no dropout: the reference below sees the same forward
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    if name == "seq_cls":  # the class index at the last real token
        labels = torch.tensor([[-100, -100, -100, 2], [-100, -100, 1, -100]])
        ref = torch.nn.functional.cross_entropy(wrapped(input_ids=ids, attention_mask=mask).logits, torch.tensor([2, 1]), reduction="none")
    else:  # causal_lm: labels are the input (shifted inside); seq2seq: labels[:, 1:] is the decoder target
        labels = torch.tensor([[-100, 12, 13, 14], [-100, 15, 16, -100]])
        ref = None
    nll, n = token_nll(wrapped, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert n.tolist() == ([1, 1] if name == "seq_cls" else [3, 2]) and bool((nll > 0).all())
    if ref is not None:
        assert torch.allclose(nll, ref.detach(), atol=1e-5)


def test_scoring_default_by_task_type():
    from types import SimpleNamespace

    ev = SimpleNamespace(scoring="auto")
    labelled = SimpleNamespace(scoring="auto", labels=["a", "b"], choices=None)
    free = SimpleNamespace(scoring="auto", labels=None, choices=None)
    assert [CAUSAL_LM.scoring(labelled, ev), CAUSAL_LM.scoring(free, ev)] == ["likelihood", "generate"]
    assert [SEQ2SEQ.scoring(labelled, ev), SEQ_CLS.scoring(free, ev)] == ["generate", "classifier"]
    chosen = SimpleNamespace(scoring="generate")  # eval.scoring wins over the default, not over a classifier head
    assert [CAUSAL_LM.scoring(labelled, chosen), SEQ_CLS.scoring(labelled, chosen)] == ["generate", "classifier"]
    rows = [Encoded([1, 2, 3], [-100, 4, 5, 6, 7], 3), Encoded([1, 2, 3, 4], [-100, 4], 4)]  # seq2seq: decoder targets, encoder inputs
    # the padded widths collate makes: the longest row rounded up to a multiple of 8 (batching.PAD_MULTIPLE)
    assert CAUSAL_LM.batch_lengths(rows) == (8, 0) and SEQ2SEQ.batch_lengths(rows) == (8, 8)
    long = [Encoded(list(range(9)), [-100] * 17, 9)]
    assert CAUSAL_LM.batch_lengths(long) == (16, 0) and SEQ2SEQ.batch_lengths(long) == (24, 16)


@pytest.mark.parametrize("name", ["seq_cls", "seq2seq"])
def test_plan_shapes_follow_the_task_type(tmp_path, tiny_bert, tiny_t5, name):
    from retune import plan
    from retune.config import validate

    base = tiny_bert if name == "seq_cls" else tiny_t5
    raw = tiny_config(base, _data(tmp_path), tmp_path / "runs", model={"base": str(base), "task": name}, adapter={"type": "full"})
    if name == "seq2seq":
        raw["data"]["format"] = "plain"
    cfg = validate(raw)
    shape = plan.model_shape(cfg)
    assert shape.kind == name and (shape.enc_layers == 2) == (name == "seq2seq")
    real = task_type(name).auto_class().from_pretrained(base)
    assert shape.params == sum(p.numel() for p in real.parameters())
    b = plan.batch_shape(cfg)
    assert b.source == "data"
    if name == "seq2seq":  # the encoder input and the decoder target are measured apart
        assert 0 < b.enc_len and b.seq_len < b.enc_len
    else:
        assert b.enc_len == 0


@pytest.mark.parametrize("kind", ["seq_cls", "seq2seq"])
def test_stages_train_every_task_type(tmp_path, tiny_bert, tiny_t5, kind):
    """stages: encode through the task type (a classifier head, a decoder target), as one run does."""
    base = tiny_bert if kind == "seq_cls" else tiny_t5
    modules = ["query", "value"] if kind == "seq_cls" else ["q", "v"]
    data = _data(tmp_path)
    task = {"train": str(data["train"]), "test": str(data["test"]), "labels": ["negative", "positive"]}
    task["template"] = {"prompt": "review: {text} sentiment?", "response": "{label}"}
    stages = [{"name": "first", "task": task}, {"name": "second", "task": {**task, "max_eval_samples": 8}, "max_steps": 2}]
    cfg = tiny_config(base, data, tmp_path / "runs", model={"base": str(base), "task": kind}, data={"format": "plain"})
    cfg.update(
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": modules},
        eval={"max_new_tokens": 3, "batch_size": 8},
        stages=stages,
        retain={"probe": None},
    )
    run_dir, summary = train(str(write_config(tmp_path / "stages.yaml", cfg)))
    assert summary["status"] == "completed" and len(summary["stages"]["R"]) == 2
    assert summary["train"]["steps"] == 4 + 2
    assert (run_dir / "stage-2" / "trainable.safetensors").exists()
