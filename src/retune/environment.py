"""Where a run ran: retune's commit, the library versions and the machine, recorded in summary.json
(`environment`) so that a report read on another machine still says what produced the numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def git_commit(folder: Path) -> str | None:
    """The commit of the git checkout holding `folder` (with "-dirty" when it has local changes), or
    None when retune was installed from a package."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", "."], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "retune_commit": git_commit(Path(__file__).resolve().parent),
        "versions": {p: version(p) for p in ("retune", "torch", "transformers", "peft", "accelerate")},
        "python": platform.python_version(),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "gpu": gpu,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
