"""Shared fixtures: a tiny Llama and a tiny byte-level BPE tokenizer with a chat template, built in-process."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub call fails fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# base-model scores kept across runs (eval.base_cache): this session's own store, never the user's; each
# test gets its own below (session-scoped fixtures run before it and share this one)
os.environ["RETUNE_BASE_CACHE"] = tempfile.mkdtemp(prefix="retune-base-scores-")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "superb", "delightful"]
NEGATIVE = ["dull", "boring", "awful", "tedious", "clumsy", "bland", "messy", "lifeless"]
FILLER = ["the", "film", "plot", "actors", "story", "was", "and", "a", "truly", "movie", "ending", "script"]


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [" ".join(POSITIVE + NEGATIVE + FILLER + ["positive", "negative", "user", "assistant", "system", "review", "sentiment"])] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def own_base_cache(tmp_path, monkeypatch) -> None:
    """Each test its own store of base-model scores (eval.base_cache), for itself and its subprocesses:
    no test reads another's."""
    monkeypatch.setenv("RETUNE_BASE_CACHE", str(tmp_path / "base-scores"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(d / "train.jsonl", make_reviews(64, seed=1)),
        "test": write_jsonl(d / "test.jsonl", make_reviews(24, seed=2)),
    }


def tiny_config(tiny_model: Path, tiny_data: dict[str, Path], out: Path, **sections) -> dict:
    """A complete raw config for the tiny model and data; sections override per key."""
    cfg = {
        "model": {"base": str(tiny_model), "dtype": "fp32"},
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {
            "train": str(tiny_data["train"]),
            "test": str(tiny_data["test"]),
            "template": {"prompt": "Review: {text}\nSentiment?", "response": "{label}"},
            "labels": ["negative", "positive"],
            "max_length": 64,
        },
        "eval": {"batch_size": 8},
        "trainer": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "log_every": 1, "precision": "fp32", "seed": 7},
        "output": {"dir": str(out), "name": "tiny"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory, tiny_model, tiny_data) -> dict[str, Path]:
    """Real tiny runs for the report tests (tests/test_report*.py), all under one runs/ folder:
    `finetune` (retained task and probe, evaluated each step, max_forgetting stops it at step 3 and
    rolls back to step 2), `stages` (two stages), `interrupted` (Ctrl-C at step 2)."""
    import retune.session as session_mod
    from helpers import write_config
    from retune.cli import run_train

    root = tmp_path_factory.mktemp("report")
    retain = {
        "tasks": [{"name": "repeat", "train": str(tiny_data["test"]), "template": {"prompt": "Repeat: {text}", "response": "{text}"}}],
        "probe": "general",
        "probe_samples": 4,
        "max_eval_samples": 6,
    }

    def train(name: str, **top) -> Path:
        cfg = tiny_config(tiny_model, tiny_data, root / "runs", output={"dir": str(root / "runs"), "name": name})
        cfg["eval"]["max_new_tokens"] = 6
        cfg.update(top)
        return run_train(str(write_config(root / f"{name}.yaml", cfg)))[0]

    trainer = {"max_steps": 6, "batch_size": 4, "lr": 5e-2, "precision": "fp32", "seed": 7, "log_every": 1}
    gate = {**trainer, "eval_every": 1, "max_forgetting": 0.5, "scheduler": "cosine", "warmup_ratio": 0.2}
    runs = {"finetune": train("finetune", retain=retain, trainer=gate)}
    task = {"train": str(tiny_data["train"]), "test": str(tiny_data["test"]), "labels": ["negative", "positive"]}
    task["template"] = {"prompt": "Review: {text}\nSentiment?", "response": "{label}"}
    repeat = {"train": str(tiny_data["test"]), "template": {"prompt": "Repeat: {text}", "response": "{text}"}, "max_eval_samples": 4}
    stages = [{"name": "sentiment", "task": task, "max_steps": 4}, {"name": "repeat", "task": repeat, "max_steps": 2}]
    runs["stages"] = train("stages", stages=stages, retain={**retain, "tasks": []}, trainer={**trainer, "eval_every": 2})

    from helpers import InterruptAt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session_mod, "LiveProgress", InterruptAt(2))  # Ctrl-C at step 2
        with pytest.raises(KeyboardInterrupt):
            train("interrupted", trainer=trainer)
    runs["interrupted"] = next((root / "runs").glob("interrupted-*"))
    return runs
