"""Helpers for tests that run the real recipe on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def flipped_copy(run: Path, dest: Path) -> Path:
    """A copy of a run whose tuned scores differ from the base on three examples (two right-to-wrong,
    one wrong-to-right): the tiny model does not change its answers, the report must show changes."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("adapter", "checkpoints", "tokenizer", "report.html"))
    path = next((dest / "scores").glob("*-tuned.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    base = {r["i"]: r for r in map(json.loads, path.with_name(path.name.replace("-tuned", "-base")).read_text().splitlines())}
    right = [r for r in rows if base[r["i"]]["accuracy"] == 1.0][:2]
    wrong = [r for r in rows if base[r["i"]]["accuracy"] == 0.0][:1]
    for r in right:
        r.update(accuracy=0.0, prediction="a changed answer")
    for r in wrong:
        r.update(accuracy=1.0, prediction=r["reference"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def with_sections(cfg, **sections):
    """The config with some sections updated (a dict) or replaced (anything else), validated again."""
    from retune.config import validate

    raw = cfg.model_dump(mode="json", exclude_unset=True)
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return validate(raw)


def communicate(p, timeout: float) -> tuple[str, str]:
    """A started process's (stdout, stderr); past the timeout its whole process group is killed (it was
    started with start_new_session=True) and the timeout raised."""
    import os
    import signal
    import subprocess

    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise


class InterruptAt:
    """A progress bar (stands in for session.LiveProgress) that presses Ctrl-C after a given step."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, *a, **k):
        return self

    def start(self, total, done=0):
        pass

    def update(self, step, loss):
        if step == self.at:
            raise KeyboardInterrupt

    def stop(self):
        pass
