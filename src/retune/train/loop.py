"""The training loop. Read it top to bottom: batches -> loss (+ retention penalties) -> step -> log/eval/save.

Policy (what to train, when to evaluate the task) lives in `retune.run`; this file is mechanism.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retune.config import TrainerConfig
from retune.data.batching import batch_indices, collate
from retune.data.templates import Encoded
from retune.evaluate.scoring import nll_totals
from retune.models.loss import training_loss
from retune.retention.base import Regularizer
from retune.train import distributed as dist
from retune.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint, save_weights
from retune.train.optim import make_optimizer, make_scheduler, total_steps


@dataclass
class LoopIO:
    """Where the loop writes, and how it reports."""

    ckpt_dir: Path
    log: Callable[[dict], None]
    progress: Any = None  # rich progress-like: .update(loss=..., step=...)
    regularizers: list[Regularizer] = field(default_factory=list)  # retention methods: penalties + hooks
    on_eval: Callable[[Any, LoopState], bool] | None = None  # the recipe's own scoring at each evaluation (retention); True stops


def fit(
    model: Any,
    train: list[Encoded] | Callable[[int], list[Encoded]],
    val: list[Encoded] | dict[str, list[Encoded]],
    cfg: TrainerConfig,
    pad_id: int,
    accelerator: Any,
    io: LoopIO,
    resume: bool = False,
) -> LoopState:
    # `train` is a list, or a function epoch -> that epoch's examples (a multi-task mix drawn afresh
    # each epoch; data/mixing.py). Every epoch has the same size. `val` is a list, or {task: list}
    # when each task's validation loss is logged too (early stopping follows the pooled loss).
    epoch_examples = train if callable(train) else (lambda epoch: train)
    # One optimizer step consumes a global batch of batch_size x grad_accum examples, split into
    # micro-batches: the same examples meet in a step whatever the split (1x8 == 8x1).
    global_batch = cfg.batch_size * cfg.grad_accum
    steps = total_steps(cfg, len(epoch_examples(0)))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Data parallelism (docs/distributed.md): the config's global batch is split across processes, so
    # N processes make the update of one and a checkpoint resumes under any process count.
    grad_scale = dist.grad_scale(accelerator)  # the engines average gradients; retune's loss is a sum
    if dist.check_engine(accelerator, cfg):  # DeepSpeed swapped in its own optimizer: schedule that one
        scheduler = make_scheduler(optimizer, cfg, steps)
    plain = accelerator.unwrap_model(model)  # what regularizers see: no DDP forward of their own

    def log(row: dict) -> None:  # metrics are written once, by rank 0
        if dist.is_main():
            io.log(row)

    state = LoopState()
    ckpt = latest_checkpoint(io.ckpt_dir) if resume else None
    if ckpt is not None:
        state, extra = load_checkpoint(ckpt, plain, optimizer, scheduler)
        for reg in io.regularizers:
            if reg.name in extra:
                reg.load_state_dict(extra[reg.name])
        log({"event": "resumed", "step": state.step, "checkpoint": ckpt.name, "processes": dist.world()})

    def checkpoint() -> None:
        # Rank 0 writes (the weights and loop position are the same everywhere); the barrier keeps
        # any rank from going on, or reading, before the checkpoint is complete.
        extra = {reg.name: reg.state_dict() for reg in io.regularizers}
        if dist.is_main():
            save_checkpoint(io.ckpt_dir, plain, optimizer, scheduler, state, cfg.keep_checkpoints, extra)
        dist.barrier()

    if io.progress is not None:
        io.progress.start(total=steps, done=state.step)
    try:
        while state.step < steps and not state.stopped_early:
            pool = epoch_examples(state.epoch)
            batches = batch_indices([len(e.input_ids) for e in pool], global_batch, cfg.seed, state.epoch)
            while state.batch_in_epoch < len(batches) and state.step < steps:
                model.train()
                batch = batches[state.batch_in_epoch]
                # Every process sees the same global batch and takes every world-th example of it.
                mine = dist.shard(batch)
                micro = [collate([pool[i] for i in mine[s : s + cfg.batch_size]], pad_id) for s in range(0, len(mine), cfg.batch_size)]
                share = 1.0
                if not micro:  # fewer examples than processes: join the gradient all-reduce with a zero loss
                    micro, share = [collate([pool[batch[0]]], pad_id)], 0.0
                t0 = time.perf_counter()
                # Normalise by the labelled tokens of the whole optimizer step (all processes), so that
                # 8 micro-batches of 1 give exactly the gradient of one batch of 8, and so do 8 processes.
                n_target = sum(_labelled(pool[i]) for i in batch)
                # this process's share of the sums: task loss, each regularizer's batch penalty, and
                # whether the regularizer returned one
                sums = torch.zeros(1 + 2 * len(io.regularizers), dtype=torch.float64)
                for k, mb in enumerate(micro):
                    # gradients are all-reduced once per step, in the backward of the last micro-batch
                    sync = k == len(micro) - 1
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                        with accelerator.autocast():
                            # per-task loss weights, when the batch has them, scale each row (B,)
                            loss, _ = training_loss(model, mb, share * mb["weights"] / n_target if "weights" in mb else share / n_target)
                            sums[0] += loss.item()
                            for j, reg in enumerate(io.regularizers):
                                term = reg.batch_penalty(plain, mb, share / n_target)
                                if term is not None:
                                    loss = loss + term
                                    sums[1 + j] += term.item()
                                    sums[1 + len(io.regularizers) + j] = 1
                        accelerator.backward(loss * grad_scale if grad_scale != 1 else loss)
                dist.all_reduce_(sums)
                task_loss = float(sums[0])  # the task's token NLL for this step, without penalties
                penalty_values = {r.name: float(sums[1 + j]) for j, r in enumerate(io.regularizers) if sums[1 + len(io.regularizers) + j]}
                # A step penalty depends on the weights only, the same on every process: its backward
                # runs after the synchronised one, outside any all-reduce, so each process adds the
                # same gradient once.
                step_terms = [(reg.name, reg.step_penalty(plain)) for reg in io.regularizers]
                step_terms = [(name, t) for name, t in step_terms if t is not None]
                if step_terms:
                    accelerator.backward(sum(t for _, t in step_terms))
                    for name, t in step_terms:
                        penalty_values[name] = penalty_values.get(name, 0.0) + t.item()
                for reg in io.regularizers:
                    reg.before_step(plain)  # the gradients here are global: already summed over processes
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for reg in io.regularizers:
                    reg.after_step(plain)

                state.step += 1
                state.batch_in_epoch += 1
                state.tokens += sum(len(pool[i].input_ids) for i in batch)  # the global batch's non-pad tokens
                state.train_seconds += time.perf_counter() - t0
                if state.step % cfg.log_every == 0 or state.step == 1:
                    log(
                        {
                            "step": state.step,
                            "epoch": state.epoch,
                            "loss": task_loss,
                            "lr": scheduler.get_last_lr()[0],
                            "tokens": state.tokens,
                            "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
                            **{f"penalty/{k}": v for k, v in penalty_values.items()},
                        }
                    )
                if io.progress is not None:
                    io.progress.update(step=state.step, loss=task_loss)
                last = state.step >= steps
                if cfg.eval_every and (state.step % cfg.eval_every == 0 or last) and val:
                    _evaluate(model, val, pad_id, cfg, accelerator, state, io, log)
                    # the recipe's scoring runs on rank 0 (it holds the base scores); its decision goes to all
                    if io.on_eval is not None and dist.broadcast_object(dist.is_main() and bool(io.on_eval(plain, state))):
                        state.stopped_early = True
                if (cfg.save_every and state.step % cfg.save_every == 0) or last or state.stopped_early:
                    checkpoint()
                if state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    except KeyboardInterrupt:
        # Ctrl-C: keep what is done. The state points at the last completed optimizer step. Under
        # several processes the others may be gone or at another step: the last periodic checkpoint stands.
        if dist.world() == 1:
            checkpoint()
        raise
    finally:
        if io.progress is not None:
            io.progress.stop()

    best = io.ckpt_dir / "best.safetensors"
    if cfg.load_best_at_end and state.best_step is not None and state.best_step != state.step and best.exists():
        from safetensors.torch import load_file

        load_trainable(plain, load_file(str(best)))
        log({"event": "loaded_best", "step": state.best_step, "val_loss": state.best_val})
    return state


def _labelled(e: Encoded) -> int:
    """Labelled tokens of an example as the loss counts them (targets are the labels shifted by one)."""
    return sum(1 for y in e.labels[1:] if y != -100)


def _evaluate(
    model: Any,
    val: list[Encoded] | dict[str, list[Encoded]],
    pad_id: int,
    cfg: TrainerConfig,
    accelerator: Any,
    state: LoopState,
    io: LoopIO,
    log: Callable,
) -> None:
    groups = val if isinstance(val, dict) else {"": val}
    totals = {name: _nll_sums(model, examples, pad_id, cfg, accelerator) for name, examples in groups.items() if examples}
    val_loss = float(sum(t[0] for t in totals.values()) / max(float(sum(t[1] for t in totals.values())), 1.0))
    per_task = {f"val_loss/{name}": float(t[0] / max(float(t[1]), 1.0)) for name, t in totals.items()} if len(totals) > 1 else {}
    improved = state.best_val is None or val_loss < state.best_val
    if improved:
        state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
        if dist.is_main():
            save_weights(io.ckpt_dir / "best.safetensors", accelerator.unwrap_model(model))
    else:
        state.bad_evals += 1
        if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
            state.stopped_early = True
    log({"step": state.step, "val_loss": val_loss, **per_task, "best_val_loss": state.best_val, "early_stop": state.stopped_early})


def _nll_sums(model: Any, val: list[Encoded], pad_id: int, cfg: TrainerConfig, accelerator: Any) -> torch.Tensor:
    """(summed token NLL, labelled tokens) of `val` over all processes."""
    # Validation loss is sharded: each process scores its share with the plain model (no DDP
    # forward), then the sums are added. FSDP / ZeRO-3 weights live on all ranks, so there every
    # rank runs every forward, on all the data.
    if dist.params_sharded(accelerator):
        return torch.tensor(nll_totals(model, val, pad_id, cfg.batch_size * 2, accelerator.autocast), dtype=torch.float64)
    mine = dist.shard(val)
    plain = accelerator.unwrap_model(model)
    part = nll_totals(plain, mine, pad_id, cfg.batch_size * 2, accelerator.autocast) if mine else (0.0, 0)
    totals = torch.tensor(part, dtype=torch.float64)
    dist.all_reduce_(totals)
    return totals
