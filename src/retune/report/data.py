"""A finished (or failed, or interrupted) run directory read back for a report: its config, summary,
metrics rows and per-example scores, with the few derived facts every view shares (status, date,
the step axis of a stages run, the primary score of each task)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from retune import io
from retune.errors import UsageError
from retune.evaluate.forgetting import primary
from retune.rundir import RunDir


def read_json(path: Path) -> Any:
    """A JSON file, or one line naming it when it is malformed."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); restore it or rerun the run") from None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's JSONL file ([] when it is missing); a torn last line (a killed process) is skipped."""
    return io.read_jsonl(path, torn_tail=True) if path.exists() else []


@dataclass
class RunData:
    run: RunDir
    config: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> RunData:
        run = RunDir.open(path)
        try:
            config = yaml.safe_load(run.config_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{run.config_path} is not valid YAML ({str(e).splitlines()[0]}); restore it") from None
        summary = read_json(run.summary_path) if run.summary_path.exists() else {}
        return cls(run, config if isinstance(config, dict) else {}, summary if isinstance(summary, dict) else {})

    @classmethod
    def unreadable(cls, path: Path, why: str) -> RunData:
        """A run directory listed with status `unreadable` (a malformed summary or config)."""
        return cls(RunDir(Path(path)), {}, {"status": f"unreadable: {why}"})

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def status(self) -> str:
        """completed | interrupted | failed | running; no summary.json: started but never summarised."""
        status = str(self.summary.get("status", ""))
        return status.split(";")[0].split(":")[0].strip() or "incomplete"

    @property
    def date(self) -> str:
        """When the run started (its config.yaml is written first), UTC."""
        stamp = self.run.config_path.stat().st_mtime
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")

    @cached_property
    def metrics(self) -> list[dict]:
        return read_jsonl(self.run.metrics_path)

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def base_model(self) -> str:
        return str(self.section("model").get("base", ""))

    @property
    def adapter(self) -> str:
        a = self.section("adapter")
        kind = str(a.get("type", ""))
        return f"{kind} r={a['r']}" if kind in ("lora", "dora", "qlora") and "r" in a else kind

    # ---------------------------------------------------------------- scores

    @property
    def tasks(self) -> list[str]:
        stages = self.summary.get("stages")
        if isinstance(stages, dict):
            return list(stages.get("tasks", []))
        return list((self.summary.get("final") or self.summary.get("tasks") or {}).keys())

    @property
    def after(self) -> str:
        """The scores/ key of the tuned model: `tuned`, or the last stage's."""
        stages = self.summary.get("stages")
        return f"stage-{len(stages['tasks'])}" if isinstance(stages, dict) else "tuned"

    def scores(self) -> list[dict[str, Any]]:
        """Per task: metric, base and tuned primary score (points) and the change."""
        base, final = self.summary.get("base") or {}, self.summary.get("final") or {}
        out = []
        for task in self.tasks:
            if task not in final:
                continue
            metric, tuned = primary(task, final[task])
            b = primary(task, base[task])[1] if task in base else None
            out.append({"task": task, "metric": metric, "base": b, "tuned": tuned, "change": None if b is None else tuned - b})
        return out

    def worst_retained(self) -> float | None:
        """The largest loss on a retained task (points; negative: every retained task improved)."""
        lost = [r["forgetting"] for r in (self.summary.get("retention") or {}).values() if "forgetting" in r]
        return 0.0 - max(lost) if lost else None  # 0.0 - : no -0.0

    def examples(self, task: str, stage: str) -> list[dict]:
        return read_jsonl(self.run.scores_file(task, stage))

    # ---------------------------------------------------------------- curves

    def stage_offsets(self) -> dict[int, int]:
        """A stages run restarts its step count at each stage: the offset that puts stage i after the ones before."""
        last: dict[int, int] = {}
        for r in self.metrics:
            if "stage" in r and isinstance(r["stage"], int) and "step" in r:
                last[r["stage"]] = max(last.get(r["stage"], 0), int(r["step"]))
        offsets, total = {}, 0
        for stage in sorted(last):
            offsets[stage] = total
            total += last[stage]
        return offsets

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(global step, value) of every metrics row that has `key`."""
        offsets = self.stage_offsets()
        xs, ys = [], []
        for r in self.metrics:
            if key in r and "step" in r and isinstance(r[key], int | float):
                xs.append(int(r["step"]) + offsets.get(r.get("stage"), 0))  # type: ignore[arg-type]
                ys.append(float(r[key]))
        return xs, ys

    def keys(self, prefix: str) -> list[str]:
        return sorted({k for r in self.metrics for k in r if k.startswith(prefix)})

    def events(self, name: str) -> list[dict]:
        offsets = self.stage_offsets()
        out = []
        for r in self.metrics:
            if r.get("event") == name:
                out.append({**r, "global_step": int(r.get("step", 0)) + offsets.get(r.get("stage"), 0)})  # type: ignore[arg-type]
        return out
