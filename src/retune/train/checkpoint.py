"""Resumable checkpoints: trainable weights, optimizer, schedule, RNG and loop position.

Each checkpoint is written into a temporary folder and renamed into place, so the newest complete
checkpoint is always loadable; older ones are pruned only after a newer one is complete.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from retune.errors import UsageError
from retune.io import replace_dir, staging_dir
from retune.types import Model


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches (optimizer steps) of the current epoch already done
    tokens: int = 0  # non-pad tokens trained on
    train_seconds: float = 0.0
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped_early: bool = False


def trainable_state(model: Model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Model, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise UsageError(f"checkpoint does not match the model: {len(missing)} trainable weights missing (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def save_weights(path: Path, model: Model) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(trainable_state(model), str(tmp))
    tmp.replace(path)


def save_checkpoint(
    ckpt_root: Path, model: Model, optimizer: Any, scheduler: Any, state: LoopState, keep: int, extra: dict | None = None
) -> Path:
    """`extra`: state of retention methods (e.g. SI's running importance), saved as it is."""
    final = ckpt_root / f"step-{state.step:07d}"
    tmp = staging_dir(final)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}, tmp / "rng.pt")
    torch.save(extra or {}, tmp / "extra.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    replace_dir(tmp, final)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in sorted(ckpt_root.glob("step-*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model: Model, optimizer: Any, scheduler: Any) -> tuple[LoopState, dict]:
    try:
        load_trainable(model, load_file(str(path / "trainable.safetensors")))
        opt = torch.load(path / "optimizer.pt", weights_only=False)
        rng = torch.load(path / "rng.pt", weights_only=False)
        state = LoopState(**json.loads((path / "state.json").read_text()))
        extra = torch.load(path / "extra.pt", weights_only=False) if (path / "extra.pt").exists() else {}
    except (OSError, RuntimeError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UsageError(f"checkpoint {path} is corrupt ({str(e).splitlines()[0]}); delete it to resume from the one before") from None
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return state, extra
