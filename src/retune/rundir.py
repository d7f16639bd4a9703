"""A run directory as a type: the one place that creates one, says whether a folder is one, and
knows where its parts live.

Layout (README, "Using it"): config.yaml (the resolved config), metrics.jsonl, summary.json,
base_scores.json / base_retention.json (what a resume must not recompute), scores/ (per-example scores),
adapter/ or model/, tokenizer/, loss.png, checkpoints/ (one run) or stage-<i>/checkpoints (stages).

It depends on the config and on atomic file writes only, so every layer that reads a finished run
(merge, serve, inference) can use it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from retune.config import RetuneConfig, load_config, to_yaml
from retune.errors import UsageError
from retune.io import write_json, write_text


def check_output_dir(cfg: RetuneConfig) -> None:
    """output.dir must be a folder (or not exist yet): checked before any model is loaded."""
    out = Path(cfg.output.dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output.dir {out} is a file, not a folder: set output.dir to a folder (e.g. --set output.dir=runs)")


def plan_path(cfg: RetuneConfig) -> Path:
    """<output.dir>/<name>-<timestamp>, with a counter when two runs start in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.output.name or "run"
    path = Path(cfg.output.dir) / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(cfg.output.dir) / f"{name}-{stamp}-{n}"
    return path


@dataclass(frozen=True)
class RunDir:
    path: Path

    # ---------------------------------------------------------------- create / open

    @classmethod
    def create(cls, cfg: RetuneConfig) -> RunDir:
        """A new run directory with config.yaml. The `--nproc` launcher names it up front (RETUNE_RUN_DIR),
        so that it can point at it if a process fails."""
        check_output_dir(cfg)
        named = os.environ.get("RETUNE_RUN_DIR")
        path = Path(named) if named else plan_path(cfg)
        try:
            path.mkdir(parents=True, exist_ok=bool(named))
        except (FileExistsError, NotADirectoryError) as e:
            raise UsageError(f"cannot create the run directory {path} ({e.strerror}): set output.dir to a folder") from None
        run = cls(path)
        write_text(run.config_path, to_yaml(cfg))
        return run

    @classmethod
    def open(cls, path: str | Path, what: str = "") -> RunDir:
        """An existing run directory, or one line saying it is not one (`what` names the option)."""
        p = Path(path)
        if not is_run_dir(p):
            why = "no such folder" if not p.exists() else "no config.yaml"
            where = f"{what} {p}" if what else str(p)
            raise UsageError(f"{where} is not a run directory ({why}); give the folder that retune train printed")
        return cls(p)

    # ---------------------------------------------------------------- parts

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def scores_file(self, task: str, stage: str) -> Path:
        """scores/<task>-<stage>.jsonl: one line per test example of a task at one stage (base, tuned, stage-<i>)."""
        return self.path / "scores" / f"{slug(task)}-{slug(stage)}.jsonl"

    def stage(self, i: int) -> Path:
        """The folder of stage i (1-based) of a stages run."""
        return self.path / f"stage-{i}"

    @property
    def model_dir(self) -> Path | None:
        """adapter/ (peft) or model/ (a full fine-tune), whichever the run saved."""
        if (self.path / "model" / "config.json").exists():
            return self.path / "model"
        if (self.path / "adapter").exists():
            return self.path / "adapter"
        return None

    def config(self, overrides: list[str] | None = None) -> RetuneConfig:
        return load_config(self.config_path, overrides)

    def read_json(self, name: str) -> Any:
        """A JSON file of the run, or None when it is not there (yet)."""
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else None

    def write_json(self, name: str, obj: object) -> None:
        write_json(self.path / name, obj)

    def need_model(self) -> Path:
        """The saved model's folder, or one line saying the run holds none."""
        found = self.model_dir
        if found is None:
            raise UsageError(
                f"{self.path} holds no trained model (no model/ or adapter/); did the run finish? try retune train --resume {self.path}"
            )
        return found


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.yaml").is_file()
