"""The lm-evaluation-harness bridge, offline: a task YAML of our own over a local JSONL, scored on the
in-memory model, as a retained task with paired intervals and through `retune eval --lm-eval`."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed: pip install 'retune[lmeval]'")

from conftest import make_reviews, write_jsonl
from retune.config import LmEvalConfig
from retune.errors import UsageError

TASK = "retune_tiny_sentiment"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm-eval-tasks")
    rows = [{**r, "label_id": int(r["label"] == "positive")} for r in make_reviews(12, seed=5)]
    data = write_jsonl(d / "reviews.jsonl", rows)
    (d / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Review: {{text}}\\nSentiment:"\n'
        "doc_to_choice: [negative, positive]\n"
        "doc_to_target: label_id\n"
        "metric_list:\n  - metric: acc\n"
    )
    return d


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    from transformers import AutoModelForCausalLM

    from retune.models.load import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), load_tokenizer(str(tiny_model))


def test_harness_scores_the_model_in_memory(task_dir, model_tok):
    from retune.evaluate import lmeval

    model, tok = model_tok
    h = lmeval.score(model, tok, LmEvalConfig(task=TASK, include_path=str(task_dir), limit=10), batch_size=4)
    assert next(iter(h.row)) == "acc" and h.row["n_test"] == 10 and len(h.examples) == 10
    assert h.row["acc"] == pytest.approx(sum(h.examples) / 10)
    assert "acc_stderr" in h.row
    # each document's outcome is the argmax of the model's own log-likelihood of " negative" / " positive"
    docs = [json.loads(line) for line in (task_dir / "reviews.jsonl").read_text().splitlines()][:10]

    def loglik(context: str, choice: str) -> float:
        whole, ctx = tok(context + " " + choice).input_ids, tok(context).input_ids
        ids, labels = torch.tensor([whole]), torch.tensor([[-100] * len(ctx) + whole[len(ctx) :]])
        with torch.no_grad():
            return -float(model(ids, labels=labels).loss) * (len(whole) - len(ctx))

    want = []
    for d in docs:
        ctx = f"Review: {d['text']}\nSentiment:"
        pick = max((0, 1), key=lambda i: loglik(ctx, ["negative", "positive"][i]))
        want.append(float(pick == d["label_id"]))
    assert h.examples == want


def test_unknown_harness_task_is_one_line(task_dir, model_tok):
    from retune.evaluate import lmeval

    with pytest.raises(UsageError, match=r"lm_eval task 'no_such_task' is not a harness task or in "):
        lmeval.score(*model_tok, LmEvalConfig(task="no_such_task", include_path=str(task_dir)), batch_size=4)


def test_harness_task_as_a_retained_task_and_in_retune_eval(tmp_path, tiny_model, tiny_data, task_dir):
    from typer.testing import CliRunner

    from retune.cli import app
    from test_retention import _run

    retain = {"probe": None, "lm_eval": [{"task": TASK, "include_path": str(task_dir), "limit": 8}]}
    run_dir, s = _run(tmp_path, tiny_model, tiny_data, retain=retain, trainer={"max_steps": 2})
    row = s["retention"][f"lm_eval/{TASK}"]
    assert (row["metric"], row["n"]) == ("acc", 8) and row["ci"][0] <= row["delta"] <= row["ci"][1]
    out = CliRunner().invoke(app, ["eval", str(run_dir), "--lm-eval", TASK, "--include", str(task_dir), "--limit", "6"])
    assert out.exit_code == 0, out.output
    scores = json.loads(out.stdout[out.stdout.index("{") :])
    got = scores[f"lm_eval/{TASK}"]
    assert got["role"] == "retained" and got["n_test"] == 6 and got["intervals"]["acc"]["n"] == 6
