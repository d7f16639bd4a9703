"""The stages recipe gets what a single run gets, because both are sequences over one Session: the
retention gate at each stage, loss_weight, trackers, bad input as exit 2 (issue 11)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import tiny_config
from helpers import read_metrics, write_config
from retune.cli import run_train as train
from retune.config import load_config
from retune.errors import UsageError

TEMPLATE = {"prompt": "Review: {text}\nSentiment?", "response": "{label}"}


def _stages(tiny_data, second: dict | None = None) -> list[dict]:
    sentiment = {"train": str(tiny_data["train"]), "test": str(tiny_data["test"]), "labels": ["negative", "positive"], "template": TEMPLATE}
    repeat = {"train": str(tiny_data["test"]), "template": {"prompt": "Repeat: {text}", "response": "{text}"}, "max_eval_samples": 4}
    return [{"name": "sentiment", "task": sentiment}, {"name": "repeat", "task": {**repeat, **(second or {})}, "max_steps": 3}]


def _config(tmp_path, tiny_model, tiny_data, **top) -> str:
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs")
    cfg["eval"]["max_new_tokens"] = 4
    cfg.update(top)
    return str(write_config(tmp_path / "stages.yaml", cfg))


def test_max_forgetting_gates_and_rolls_back_each_stage(tmp_path, tiny_model, tiny_data):
    trainer = {"max_steps": 4, "batch_size": 4, "lr": 5e-2, "precision": "fp32", "seed": 7, "eval_every": 1, "max_forgetting": 1e-6}
    retain = {"tasks": [], "probe": "general", "probe_samples": 4}
    run_dir, s = train(_config(tmp_path, tiny_model, tiny_data, stages=_stages(tiny_data), retain=retain, trainer=trainer))
    rows = read_metrics(run_dir)
    stopped = {r["stage"] for r in rows if r.get("event") == "max_forgetting"}
    assert stopped == {1, 2}  # a threshold nothing can meet: the gate fires in every stage
    assert s["train"]["steps"] < 4 + 3
    assert "general-text" in s["retention"]


def test_loss_weight_applies_in_stages(tmp_path, tiny_model, tiny_data):
    run_dir, _ = train(_config(tmp_path, tiny_model, tiny_data, stages=_stages(tiny_data, {"loss_weight": 0.0})))
    by_stage: dict[int, list[float]] = {1: [], 2: []}
    for r in read_metrics(run_dir):
        if "loss" in r and "stage" in r:
            by_stage[r["stage"]].append(r["loss"])
    assert by_stage[1] and min(by_stage[1]) > 0
    assert by_stage[2] and all(v == 0.0 for v in by_stage[2])  # the task's losses times 0


def test_trackers_run_in_stages(tmp_path, tiny_model, tiny_data):
    pytest.importorskip("tensorboard")
    trainer = {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "log_every": 1, "logger": "tensorboard"}
    run_dir, _ = train(_config(tmp_path, tiny_model, tiny_data, stages=_stages(tiny_data), trainer=trainer))
    assert list(run_dir.rglob("events.out.tfevents.*"))


def test_a_bad_stages_entry_is_bad_input(tmp_path, tiny_model, tiny_data):
    stages = _stages(tiny_data)
    stages[1]["name"] = "sentiment"
    path = _config(tmp_path, tiny_model, tiny_data, stages=stages)
    with pytest.raises(UsageError, match="stages"):
        load_config(path)
    r = subprocess.run([sys.executable, "-m", "retune.cli", "train", path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing written
