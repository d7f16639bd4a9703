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
from retune.train import distributed as dist
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


def sharded(model: Model) -> bool:
    """Under FSDP the weights are DTensor shards: whole on no single process."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _whole(t: torch.Tensor) -> torch.Tensor | None:
    """`t` whole: an FSDP shard is gathered from every process (all call this, in the same order) and
    kept on rank 0 only (None elsewhere); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t
    full = t.full_tensor()
    return full.cpu() if dist.is_main() else None


def _shard_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor as `like`'s shard on this process when `like` is an FSDP DTensor (no communication:
    every process holds the whole tensor and keeps its own part)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or t.shape != like.shape:
        return t
    return distribute_tensor(t.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def trainable_state(model: Model) -> dict[str, torch.Tensor]:
    """The trainable weights, whole. Under FSDP every process must call it and only rank 0 gets them."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad and (t := _whole(p.detach())) is not None:
            out[n] = t.contiguous().clone()
    return out


def _optimizer_state(optimizer: Any) -> dict:
    """optimizer.state_dict() with FSDP-sharded moments gathered whole (rank 0's is complete)."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: _whole(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in sd["state"].items()}
    return sd


def _shard_optimizer_state(optimizer: Any, sd: dict) -> dict:
    """A saved (whole) optimizer state cut to this process's shards of the parameters it belongs to."""
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    params = dict(zip(ids, [p for g in optimizer.param_groups for p in g["params"]], strict=True))
    cut = {i: {k: _shard_like(v, params[i]) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in sd["state"].items()}
    return {**sd, "state": cut}


def load_trainable(model: Model, tensors: dict[str, torch.Tensor]) -> None:
    """Whole weights into the model (into each process's shards under FSDP: every process passes them)."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise UsageError(f"checkpoint does not match the model: {len(missing)} trainable weights missing (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(_shard_like(t, params[n]))


def save_weights(path: Path, model: Model) -> None:
    """The trainable weights to `path` (rank 0 writes; under FSDP every process must call it)."""
    if not (dist.is_main() or sharded(model)):
        return
    tensors = trainable_state(model)
    if dist.is_main():
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)


def save_checkpoint(
    ckpt_root: Path, model: Model, optimizer: Any, scheduler: Any, state: LoopState, keep: int, extra: dict | None = None
) -> Path | None:
    """Rank 0 writes the checkpoint (under FSDP every process must call this: the weights and optimizer
    moments are gathered whole, so any process count resumes it). `extra`: state of retention methods
    (e.g. SI's running importance), saved as it is."""
    if not (dist.is_main() or sharded(model)):
        return None
    weights, opt = trainable_state(model), _optimizer_state(optimizer)
    if not dist.is_main():
        return None
    final = ckpt_root / f"step-{state.step:07d}"
    tmp = staging_dir(final)
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": opt, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
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
    optimizer.load_state_dict(_shard_optimizer_state(optimizer, opt["optimizer"]) if sharded(model) else opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return state, extra
