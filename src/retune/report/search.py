"""A search directory (`retune tune` writes tune.json there): its trials, their Pareto front over
(gain on the task, worst retained change), both to be maximised, and the trials' run directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retune.errors import UsageError
from retune.report.data import RunData, read_json
from retune.report.rows import fmt
from retune.rundir import is_run_dir

TUNE = "tune.json"


def is_search_dir(path: str | Path) -> bool:
    return (Path(path) / TUNE).is_file()


def dominated(a: list[float], b: list[float]) -> bool:
    """b is at least as good as a on both objectives and better on one."""
    return all(y >= x for x, y in zip(a, b, strict=True)) and any(y > x for x, y in zip(a, b, strict=True))


@dataclass
class Search:
    path: Path
    trials: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> Search:
        p = Path(path)
        doc = read_json(p / TUNE)
        trials = doc.get("trials") if isinstance(doc, dict) else None
        if not isinstance(trials, list) or not all(isinstance(t, dict) and "number" in t for t in trials):
            raise UsageError(f"{p / TUNE} has no list of trials (each with a number); was it written by retune tune?")
        return cls(p, trials)

    def scored(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if isinstance(t.get("values"), list) and len(t["values"]) >= 2]

    def front(self) -> list[int]:
        """The numbers of the trials no other trial dominates."""
        done = self.scored()
        return [t["number"] for t in done if not any(dominated(t["values"][:2], o["values"][:2]) for o in done)]

    def run_path(self, trial: dict[str, Any]) -> Path | None:
        raw = trial.get("run_dir")
        if not raw:
            return None
        for p in (Path(raw), self.path / raw, self.path / Path(raw).name):
            if is_run_dir(p):
                return p
        return None

    def runs(self) -> list[RunData]:
        """The run directories of the front's trials (those still on disk)."""
        front = set(self.front())
        paths = [self.run_path(t) for t in self.trials if t["number"] in front]
        return [RunData.load(p) for p in paths if p is not None]

    def table(self, front: list[int]) -> str:
        from retune.report.tables import table

        rows = []
        for t in sorted(self.trials, key=lambda t: t["number"]):
            values: list[Any] = (t["values"] if isinstance(t.get("values"), list) else []) + [None, None]
            params = ", ".join(f"{k}={fmt(v, '.3g')}" for k, v in (t.get("params") or {}).items())
            on_front = "yes" if t["number"] in front else ""
            rows.append(
                [t["number"], t.get("state", ""), params, fmt(values[0], "+.2f"), fmt(values[1], "+.2f"), on_front, t.get("run_dir", "")]
            )
        return table(["trial", "state", "parameters", "gain", "worst retained change", "Pareto front", "run"], rows)
