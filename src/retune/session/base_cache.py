"""The base model's scores, kept across runs (eval.base_cache).

Before training, a run scores the base model on every task and on what it must retain. Those scores
depend on the base model, the data, the prompts, the scoring settings, retune's code and the machine's
kernels, and on nothing a run tunes (learning rate, adapter rank, steps). Runs that share all of those
(a search's trials, a re-run of the same config) share the base scores: the first run stores them under
the cache directory (`RETUNE_CACHE`, default ~/.cache/retune) in base-scores/<key>/ (or under
`RETUNE_BASE_CACHE` when set: the tests give each test its own) as the run directory holds them
(base_scores.json, base_retention.json, scores/*-base.jsonl), and the next ones copy them into their
own run directory. The key hashes every input listed above (`key`); what is not known to be
irrelevant is in it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from retune.config import RetuneConfig
from retune.io import content_hash, replace_dir, staging_dir
from retune.paths import cache_dir
from retune.rundir import RunDir

FILES = ("base_scores.json", "base_retention.json")
# trainer keys that only shape optimisation (base scoring never reads them); every other trainer key
# (precision, seed, compile, lean activations, ...) is part of the key
OPTIMISATION = {
    "epochs", "max_steps", "batch_size", "grad_accum", "lr", "scheduler", "warmup_ratio", "warmup_steps",
    "weight_decay", "max_grad_norm", "eval_every", "save_every", "keep_checkpoints", "early_stopping_patience",
    "load_best_at_end", "log_every", "logger", "threads", "max_forgetting", "forgetting_test", "select",
}  # fmt: skip
# adapter keys that change the base model as scored: a 4-bit base (qlora) is scored quantised
LOADING = {"type", "quantization", "double_quant", "compute_dtype"}
KERNEL_ENV = ("ONEDNN_", "DNNL_", "ATEN_CPU_CAPABILITY", "MKL_")


def key(cfg: RetuneConfig, model_path: str, inputs: object) -> str:
    """The cache key: the config's scoring-relevant sections, the base model's files (name, size,
    modification time), `inputs` (content hashes of the data as encoded, from the session), retune's
    source, library versions and the kernels' CPU / GPU kind."""
    import torch
    import transformers

    raw = cfg.model_dump(mode="json")
    parts = {
        "model": raw["model"],
        "data": raw["data"],
        "eval": {k: v for k, v in raw["eval"].items() if k != "base_cache"},
        "retain": raw.get("retain"),
        "adapter": {k: v for k, v in raw["adapter"].items() if k in LOADING},
        "trainer": {k: v for k, v in raw["trainer"].items() if k not in OPTIMISATION},
        "files": _files(Path(model_path)),
        "inputs": inputs,
        "code": source_hash(),
        "versions": [torch.__version__, transformers.__version__],
        "kernels": [torch.backends.cpu.get_cpu_capability(), torch.cuda.get_device_name() if torch.cuda.is_available() else None],
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith(KERNEL_ENV)),
    }
    return content_hash(parts)[:24]


def restore(run: RunDir, k: str) -> bool:
    """Copy the stored base scores of key `k` into the run directory; False when there are none."""
    src = root() / k
    if not (src / "done").exists():
        return False
    for f in src.rglob("*"):
        if f.is_file() and f.name != "done":
            dest = run.path / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return True


def store(run: RunDir, k: str) -> None:
    """Keep the run directory's base scores under key `k` (written whole, then moved into place)."""
    final = root() / k
    tmp = staging_dir(final)
    for name in FILES:
        if (run.path / name).exists():
            shutil.copyfile(run.path / name, tmp / name)
    for f in sorted((run.path / "scores").glob("*-base.jsonl")):
        (tmp / "scores").mkdir(exist_ok=True)
        shutil.copyfile(f, tmp / "scores" / f.name)
    (tmp / "done").write_text("")
    replace_dir(tmp, final)


def root() -> Path:
    folder = os.environ.get("RETUNE_BASE_CACHE")
    return Path(folder) if folder else cache_dir("base-scores")


@functools.cache
def source_hash() -> str:
    """sha256 of retune's own source files: a change to the code may change the scores."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _files(path: Path) -> list[Any]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
