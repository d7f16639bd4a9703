"""The real built-in model and dataset (slow: the first run converts the model, ~15 s)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retune.cli import app
from retune.data.builtin import load_builtin

pytestmark = pytest.mark.slow
QUICKSTART = "examples/quickstart.yaml"


def test_rotten_tomatoes_split_by_movie_without_leakage():
    splits = {s: load_builtin("rotten-tomatoes", s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 12808
    assert len(splits["test"]) >= 500
    movies = {s: {r["movie"] for r in rows} for s, rows in splits.items()}
    assert not movies["train"] & movies["test"] and not movies["train"] & movies["validation"]
    assert {r["label"] for r in splits["train"]} == {"positive", "negative"}


def test_quickstart_lora_two_steps_on_smollm2(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "train",
            QUICKSTART,
            "--set",
            "trainer.max_steps=2",
            "--set",
            "data.max_eval_samples=16",
            "--set",
            f"output.dir={tmp_path}",
            "--set",
            "trainer.eval_every=2",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(open(result.stdout.strip().splitlines()[-1]).read())
    assert summary["status"] == "completed"
    assert summary["train"]["trainable_params"] < 0.05 * summary["train"]["total_params"]
    base = summary["base"]["rotten-tomatoes"]
    assert base["n_test"] == 16 and base["accuracy"] * 16 == pytest.approx(round(base["accuracy"] * 16))
    assert summary["final"]["rotten-tomatoes"]["val_loss"] < summary["base"]["rotten-tomatoes"]["val_loss"]
