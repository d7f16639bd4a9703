"""Data-parallel training on CPU (gloo): 2 processes make the run of 1; a killed rank fails cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from helpers import losses, read_metrics, write_config
from retune import allocator
from retune.cli import run_train as train
from retune.train import distributed

# batch_size 1 x grad_accum 3: rank 0 takes 2 micro-batches, rank 1 takes 1 (uneven shares), and the
# epoch's last global batch has 1 example (rank 1 joins the all-reduce with a zero loss)
TRAINER = {"batch_size": 1, "grad_accum": 3, "max_steps": 23, "eval_every": 11, "threads": 1, "scheduler": "cosine", "warmup_steps": 2}


def _spawn(args: list[str], tag: str) -> subprocess.Popen:
    """`retune ARGS` in its own session (a process group to kill), one thread per process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RETUNE_TEST_TAG": tag}
    return subprocess.Popen(
        [sys.executable, "-m", "retune.cli", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _cli(args: list[str], tag: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """`retune train ... --nproc 2` in its own session, so a timeout kills every process it started."""
    from helpers import communicate

    p = _spawn(args, tag)
    out, err = communicate(p, timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _run_dir(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(result.stdout.strip().splitlines()[-1]).parent


def test_helpers_are_no_ops_without_a_process_group():
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    t = torch.ones(3)
    assert distributed.all_reduce_(t) is t and t.tolist() == [1.0, 1.0, 1.0]
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.agree(lambda: "x") == "x"


def test_the_blamed_rank_is_the_cause_not_a_consequence():
    from types import SimpleNamespace as F

    kill, abort, term = -int(signal.SIGKILL), -int(signal.SIGABRT), -int(signal.SIGTERM)
    # rank 1 was killed; rank 0 aborted tearing down its broken process group in the same second
    message, code = distributed._describe({0: F(exitcode=abort, timestamp=5, pid=10), 1: F(exitcode=kill, timestamp=5, pid=11)}, 2)
    assert message.startswith("training process rank 1 of 2 was killed by SIGKILL (pid 11)") and code == 1
    message, _ = distributed._describe({0: F(exitcode=1, timestamp=4, pid=10), 1: F(exitcode=abort, timestamp=5, pid=11)}, 2)
    assert "rank 1 of 2 was killed by SIGABRT" in message  # a lone abort is the cause; exit 1 lost its peer
    message, code = distributed._describe({0: F(exitcode=term, timestamp=6, pid=10), 1: F(exitcode=2, timestamp=7, pid=11)}, 2)
    assert "rank 1 of 2 exited with code 2" in message and code == 2  # torchrun's SIGTERM is never the cause


def test_two_processes_equal_one(tmp_path, tiny_model, tiny_data):
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer=TRAINER)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    one, _ = train(str(path))
    two = _run_dir(_cli(["train", str(path), "--nproc", "2"]))

    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train"]["steps"] == 23
    assert summary["train"]["allocator"] == allocator.wanted({})[0], "the ranks run on the allocator `retune` chose"
    rows = read_metrics(two)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 24)), "metrics are written once, by rank 0"
    l1, l2 = losses(one), losses(two)
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-4), step
    v1 = [r["val_loss"] for r in read_metrics(one) if "val_loss" in r]
    v2 = [r["val_loss"] for r in rows if "val_loss" in r]
    assert v2 == pytest.approx(v1, abs=1e-4)
    w1 = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    w2 = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-4, rtol=1e-3)  # Adam magnifies float-order noise where gradients are ~0
    assert json.loads((one / "summary.json").read_text())["train"]["tokens"] == summary["train"]["tokens"]


def _rank_pid(tag: str, rank: int) -> int | None:
    """The process that torchrun started as `rank` for the run tagged `tag`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("RETUNE_TEST_TAG") == tag and env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
            return int(proc.name)
    return None


def _kill_rank_one_after_a_checkpoint(args: list[str], tag: str, runs: Path) -> tuple[int, str]:
    """`retune ARGS` (with --nproc 2) with rank 1 SIGKILLed once a checkpoint under `runs` is complete:
    the launcher's (exit code, stderr)."""
    p = _spawn(args, tag)
    try:
        deadline, victim = time.monotonic() + 240, None
        while time.monotonic() < deadline and p.poll() is None:
            # any complete checkpoint will do: with keep_checkpoints 2 a given step-* is pruned again within
            # a few steps, so waiting for one by name can miss it on a fast machine and let the run finish
            victim = victim or _rank_pid(tag, 1)
            if victim and list(runs.glob("*/checkpoints/step-*/state.json")):
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.05)
        assert victim is not None and p.poll() is None, "the run ended before rank 1 could be killed"
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    return p.returncode, err


def test_killed_rank_fails_cleanly_and_resume_continues_on_one_process(tmp_path, tiny_model, tiny_data):
    trainer = {"batch_size": 2, "grad_accum": 2, "max_steps": 300, "save_every": 2, "threads": 1}
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer=trainer)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    tag = uuid.uuid4().hex
    code, err = _kill_rank_one_after_a_checkpoint(["train", str(path), "--nproc", "2"], tag, tmp_path / "runs")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert "rank 1 of 2 was killed by SIGKILL" in last and "retune train --resume" in last, err[-2000:]
    assert _rank_pid(tag, 0) is None, "no training process is left behind"

    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"].startswith("failed")
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "state.json").exists() for c in ckpts), "only complete checkpoints carry a step-* name"
    for c in ckpts:
        load_file(str(c / "trainable.safetensors"))
    resume_from = json.loads((ckpts[-1] / "state.json").read_text())["step"]

    resumed, s = train(None, resume=str(run_dir))  # 1 process now
    assert s["status"] == "completed" and s["train"]["steps"] == 300
    event = next(r for r in read_metrics(resumed) if r.get("event") == "resumed")
    assert event["step"] == resume_from and event["processes"] == 1

    # the same 300-step run on one process from the start: the resumed steps follow it
    whole, _ = train(str(write_config(tmp_path / "whole.yaml", {**cfg, "output": {"dir": str(tmp_path / "whole"), "name": "w"}})))
    lw, lr = losses(whole), losses(resumed)
    for step in range(resume_from + 1, resume_from + 6):
        assert lr[step] == pytest.approx(lw[step], abs=1e-4), step


def test_nproc_rejects_bad_input_before_starting_processes(tmp_path, tiny_model, tiny_data):
    r = _cli(["train", str(tmp_path / "missing.yaml"), "--nproc", "2"], timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]
    r = _cli(["train", str(tmp_path / "missing.yaml"), "--nproc", "0"], timeout=120)
    assert r.returncode == 2 and "--nproc 0" in r.stderr


def test_stages_under_two_processes_equal_one(tmp_path, tiny_model, tiny_data):
    """stages: with --nproc 2 (the run directory rank 0 made is every rank's; EWC consolidates on all ranks)."""
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", trainer={**TRAINER, "max_steps": 6, "eval_every": 3})
    task = {k: cfg["data"][k] for k in ("train", "test", "labels", "template")}
    cfg["stages"] = [{"name": "first", "task": task}, {"name": "second", "task": task, "max_steps": 3}]
    cfg["retention"] = [{"method": "ewc", "weight": 1.0, "samples": 4}]
    path = write_config(tmp_path / "stages.yaml", cfg)
    one, s1 = train(str(path))
    two = _run_dir(_cli(["train", str(path), "--nproc", "2"]))
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["status"] == "completed" and s2["train"]["steps"] == 6 + 3
    for r1, r2 in zip(s1["stages"]["R"], s2["stages"]["R"], strict=True):
        assert r2 == pytest.approx(r1, abs=0.5)
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys()
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-4), step
