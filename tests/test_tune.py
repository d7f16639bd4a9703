"""`retune tune` on the tiny model: the space is checked before any trial, a search writes tune.json /
best.yaml / front.png and best.yaml trains, the pruner stops a hopeless trial, a killed search resumes
without losing or double-counting a trial, and two workers share one SQLite study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from helpers import write_config
from retune.cli import app, run_train, train_config
from retune.config import load_config
from retune.errors import UsageError
from retune.recipes import tune as search
from retune.search.report import excess, outcome
from retune.search.study import open_study, tune_dir

runner = CliRunner()
LR = {"trainer.lr": {"loguniform": [1e-3, 3e-2]}}
KEPT = {"template": {"prompt": "Is this review positive? {text}", "response": "{label}"}, "labels": ["negative", "positive"]}


def _cfg(tmp_path, tiny_model, tiny_data, space=None, name="tiny", **tune) -> Path:
    raw = tiny_config(
        tiny_model,
        tiny_data,
        tmp_path / "runs",
        trainer={"max_steps": 4, "eval_every": 2, "threads": 1},
        retain={"probe_samples": 4, "tasks": [{"name": "kept", "train": str(tiny_data["test"]), **KEPT}]},
        output={"name": name},
    )
    raw["tune"] = {"space": space or LR, "trials": 3, "startup_trials": 2, **tune}
    return write_config(tmp_path / f"{name}.yaml", raw)


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"trainer.lrr": {"loguniform": [1e-5, 1e-3]}}, "tune.space: no config key 'trainer.lrr' (did you mean 'trainer.lr'?)"),
        ({"trainer.lr": {"logunifrom": [1e-5, 1e-3]}}, "unknown key 'tune.space.trainer.lr.logunifrom' (did you mean 'loguniform'?)"),
        ({"trainer.lr": {"loguniform": [0, 1e-3]}}, "loguniform: both ends must be > 0"),
        ({"trainer.lr": {"uniform": [1e-3, 1e-5]}}, "low < high"),
        ({"trainer": {"choice": [1]}}, "'trainer' is a section"),
        ({"adapter.r": {"choice": [0, 4]}}, "tune.space: adapter.r=0"),
        ({"retention[0].weight": {"uniform": [0.1, 1]}}, "retention has 0 item(s)"),
    ],
)
def test_bad_space_exits_2_before_any_trial(tmp_path, tiny_model, tiny_data, space, needle):
    cfg = _cfg(tmp_path, tiny_model, tiny_data, space)
    result = runner.invoke(app, ["tune", str(cfg)])
    err = result.stderr.strip()
    assert result.exit_code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_search_writes_front_and_best_yaml_that_trains(tmp_path, tiny_model, tiny_data):
    space = {**LR, "adapter.r": {"choice": [2, 4]}}
    cfg = _cfg(tmp_path, tiny_model, tiny_data, space, prune=False)
    report = search.run(load_config(cfg), train_config)
    folder = tmp_path / "runs" / "tiny-tune"
    on_disk = json.loads((folder / "tune.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert "js-plotly-plot" in (folder / "report.html").read_text() or "Plotly" in (folder / "report.html").read_text()  # the search's page
    assert [t["number"] for t in on_disk["trials"]] == [0, 1, 2]
    assert {t["state"] for t in on_disk["trials"]} == {"COMPLETE"}
    assert [o["name"] for o in on_disk["objectives"]] == ["score", "worst_retained"]
    for t in on_disk["trials"]:
        assert set(t["params"]) == {"trainer.lr", "adapter.r"}
        assert Path(t["run_dir"]).name == f"trial-{t['number']:03d}"
        summary = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "completed"
        ran = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert ran["trainer"]["lr"] == t["params"]["trainer.lr"] and ran["adapter"]["r"] == t["params"]["adapter.r"]
        assert t["retained"] == pytest.approx({k: -r["forgetting"] for k, r in summary["retention"].items()})
        for name in ("gain", "kept"):  # paired 95% intervals of the new task's gain and the retained task's change
            assert t["intervals"][name]["low"] <= t["intervals"][name]["delta"] <= t["intervals"][name]["high"]
        assert t["intervals"]["kept"]["delta"] == pytest.approx(t["retained"]["kept"])
        assert t["values"][1] == pytest.approx(min(t["retained"].values()))
    # the front is the non-dominated set (both objectives maximised)
    vals = {t["number"]: t["values"] for t in on_disk["trials"]}
    dominated = {
        a for a in vals for b in vals if b != a and all(x >= y for x, y in zip(vals[b], vals[a], strict=True)) and vals[b] != vals[a]
    }
    assert set(on_disk["front"]) == set(vals) - dominated
    assert on_disk["best"] == max(vals, key=lambda n: (vals[n][0], vals[n][1]))
    assert (folder / "front.png").stat().st_size > 0
    # best.yaml trains to the best trial's score (same config, same seed, same data)
    run_dir, summary = run_train(str(folder / "best.yaml"))
    best = next(t for t in on_disk["trials"] if t["number"] == on_disk["best"])
    assert summary["status"] == "completed" and run_dir.parent == tmp_path / "runs"
    again = outcome(summary)
    assert again["score"] == pytest.approx(best["score"], abs=1e-9)
    assert again["retained"] == pytest.approx(best["retained"], abs=1e-4)
    # a second start without --resume refuses to overwrite the study
    with pytest.raises(UsageError, match="already exists"):
        search.run(load_config(cfg), train_config)


def test_max_forgetting_point_or_significant():
    out = {"retained": {"a": -4.0, "b": -1.0, "general-text": -0.5}, "intervals": {"a": {"delta": -4.0, "low": -9.0, "high": 1.0}}}
    assert excess(out, 3.0, "point") == pytest.approx(1.0)  # a lost 4 > 3: infeasible
    assert excess(out, 3.0, "significant") == pytest.approx(-2.0)  # a's interval reaches +1: not certain; b lost 1
    out["intervals"]["a"]["high"] = -3.5
    assert excess(out, 3.0, "significant") == pytest.approx(0.5)  # now a surely lost more than 3


def test_pruner_stops_a_hopeless_trial(tmp_path, tiny_model, tiny_data):
    space = {"trainer.lr": {"loguniform": [1e-8, 3e-2]}}
    cfg = load_config(_cfg(tmp_path, tiny_model, tiny_data, space))
    study = open_study(cfg, cfg.tune, tune_dir(cfg), None, resume=False)
    for lr in (2e-2, 2e-2, 1e-8):  # two good trials, then one that cannot learn in 4 steps
        study.enqueue_trial({"trainer.lr": lr})
    report = search.run(cfg, train_config, resume=True)
    states = [t["state"] for t in report["trials"]]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = report["trials"][2]
    assert pruned["reason"].startswith("pruned: step 2: validation loss")
    assert set(pruned["val_loss"]) == {"2"}  # stopped at its first evaluation
    assert json.loads((Path(pruned["run_dir"]) / "summary.json").read_text())["status"] == pruned["reason"]
    assert not (Path(pruned["run_dir"]) / "adapter").exists()


def test_a_failed_trial_is_data_and_the_study_goes_on(tmp_path, tiny_model, tiny_data, monkeypatch):
    from retune import allocator

    released: list[int] = []  # memory goes back to the OS after every trial, failed or not
    monkeypatch.setattr(allocator, "release", lambda: released.append(1))
    missing = str(tmp_path / "no-such-model")  # a valid config whose trial cannot run
    space = {"model.base": {"choice": [missing, str(tiny_model)]}}
    cfg = load_config(_cfg(tmp_path, tiny_model, tiny_data, space, trials=2, prune=False))
    study = open_study(cfg, cfg.tune, tune_dir(cfg), None, resume=False)
    for base in (missing, str(tiny_model)):
        study.enqueue_trial({"model.base": base})
    report = search.run(cfg, train_config, resume=True)
    failed, done = report["trials"]
    assert (failed["state"], done["state"]) == ("FAIL", "COMPLETE")
    assert failed["reason"].startswith("UsageError: ") and "no-such-model" in failed["reason"]
    assert report["best"] == 1 and report["front"] == [1]
    assert len(released) == 2


def test_a_trial_that_cannot_fit_the_budget_is_skipped(tmp_path, tiny_model, tiny_data):
    cfg = load_config(_cfg(tmp_path, tiny_model, tiny_data, trials=1, prune=False))
    report = search.run(cfg, train_config, budget_mb=1.0)
    (t,) = report["trials"]
    assert t["state"] == "FAIL" and "retune plan predicts a peak of" in t["reason"] and "1 MB budget; skipped" in t["reason"]
    assert not Path(t["run_dir"]).exists()  # nothing loaded, nothing written
    assert report["best"] is None and not (tune_dir(cfg) / "best.yaml").exists()


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "retune.cli", "tune", *args]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    from helpers import communicate

    _, err = communicate(p, timeout)
    return p.returncode, err


def test_killed_search_resumes_without_losing_or_recounting_a_trial(tmp_path, tiny_model, tiny_data):
    cfg = _cfg(tmp_path, tiny_model, tiny_data, prune=False)
    folder = tmp_path / "runs" / "tiny-tune"
    p = _spawn([str(cfg)])
    deadline = time.monotonic() + 240
    while not (folder / "trial-001" / "config.yaml").exists():  # killed during the second trial
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    report = search.run(load_config(cfg), train_config, resume=True)
    rows = {t["number"]: t for t in report["trials"]}
    assert rows[1]["reason"] == "interrupted (retried)"
    retry = next(t for t in report["trials"] if t["retry_of"] == 1)
    assert retry["params"] == rows[1]["params"] and retry["state"] == "COMPLETE"
    done = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 3  # tune.trials, the interrupted one not counted
    assert len({t["run_dir"] for t in done}) == 3


def test_two_workers_share_one_sqlite_study(tmp_path, tiny_model, tiny_data):
    cfg = _cfg(tmp_path, tiny_model, tiny_data, prune=False, trials=6)
    loaded = load_config(cfg)
    open_study(loaded, loaded.tune, tune_dir(loaded), None, resume=False)  # `retune tune` makes it; both workers join
    folder = tune_dir(loaded)
    workers = [_spawn([str(cfg), "--resume"]) for _ in range(2)]
    (c1, e1), (c2, e2) = (_wait(w) for w in workers)
    assert (c1, c2) == (0, 0), e1[-2000:] + e2[-2000:]
    report = json.loads((folder / "tune.json").read_text())
    assert [t["number"] for t in report["trials"]] == list(range(6))  # no number twice, none missing
    assert {t["state"] for t in report["trials"]} == {"COMPLETE"}
    assert {json.loads(Path(t["run_dir"], "summary.json").read_text())["status"] for t in report["trials"]} == {"completed"}
    assert len({t["worker"] for t in report["trials"]}) == 2, [t["worker"] for t in report["trials"]]  # both ran trials
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{n:03d}" for n in range(6)]
