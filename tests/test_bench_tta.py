"""The helper logic of benchmarks/time_to_accuracy.py and benchmarks/scoring_speed.py (the benchmarks
themselves train real models for minutes and do not run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from scoring_speed import outside_training
from time_to_accuracy import Clock, cap_seconds, first_reached, time_table


def test_clock_leaves_out_paused_time():
    now = iter([0.0, 10.0, 25.0, 40.0, 41.0])
    clock = Clock(now=lambda: next(now))
    clock.start()  # 0
    assert clock.pause() == 10.0  # 10: an evaluation starts
    assert clock.pause() == 10.0  # pausing twice counts nothing
    clock.start()  # 25: the evaluation took 15 s
    assert clock.elapsed() == 25.0  # 40
    assert clock.pause() == 26.0  # 41


def _history(*points):
    return [{"step": 50 * (i + 1), "train_seconds": s, "accuracy": a} for i, (s, a) in enumerate(points)]


def test_first_reached_is_the_first_evaluation_at_or_above():
    h = _history((40, 0.83), (80, 0.85), (120, 0.84), (160, 0.86))
    assert first_reached(h, 0.85)["train_seconds"] == 80
    assert first_reached(h, 0.84)["train_seconds"] == 80
    assert first_reached(h, 0.9) is None


def test_cap_is_a_multiple_of_the_highest_target_reached():
    h = _history((40, 0.83), (80, 0.845), (120, 0.851))
    assert cap_seconds(h, [0.85, 0.84], 2.0) == 240
    assert cap_seconds(h, [0.86, 0.84], 2.0) == 160  # 0.86 never reached: the next target down
    assert cap_seconds(h, [0.9], 1.5) == 180  # none reached: the whole run


def test_time_table_ratios_and_bounds():
    rows = [
        {"contender": "retune", "history": _history((40, 0.84), (80, 0.86))},
        {"contender": "trl-packing", "history": _history((100, 0.845), (200, 0.849))},
        {"contender": "hf-trainer", "error": "boom"},
    ]
    table = time_table(rows, [0.85, 0.84])
    assert set(table) == {"0.85", "0.84"}
    assert "hf-trainer" not in table["0.85"]
    r85, t85 = table["0.85"]["retune"], table["0.85"]["trl-packing"]
    assert r85["seconds"] == 80 and t85["seconds"] is None and t85["best_accuracy"] == 0.849
    assert r85["ratio_to_trl-packing_below"] == pytest.approx(80 / 200)  # TRL trained 200 s without getting there
    assert table["0.84"]["retune"]["ratio_to_trl-packing"] == pytest.approx(40 / 100)
    assert "ratio_to_trl-packing" not in table["0.84"]["trl-packing"]


def test_outside_training_splits_a_runs_wall_time():
    summary = {"train": {"wall_seconds": 500.0, "train_seconds": 300.0}}
    metrics = [
        {"time": 0.0, "event": "task_eval", "stage": "base model", "seconds": 60.0},
        {"time": 10.0, "step": 1, "loss": 1.0},
        {"time": 100.0, "step": 200, "loss": 0.5},
        {"time": 118.0, "step": 200, "val_loss": 0.2},
        {"time": 121.0, "step": 200, "forgetting/general-text": 1.0},
        {"time": 200.0, "step": 400, "loss": 0.4},
        {"time": 220.0, "step": 400, "val_loss": 0.1},
        {"time": 300.0, "event": "task_eval", "stage": "tuned model", "seconds": 75.0},
    ]
    out = outside_training(summary, metrics)
    assert out["outside_seconds"] == 200.0 and out["outside_share"] == 0.4
    assert out["base_scoring_seconds"] == 60.0 and out["tuned_scoring_seconds"] == 75.0
    assert out["validation_seconds"] == 18.0 + 3.0 + 20.0
    assert out["other_seconds"] == 200.0 - 60.0 - 75.0 - 41.0
