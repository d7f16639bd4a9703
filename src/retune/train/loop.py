"""The training loop. Read `fit` top to bottom: epochs -> global batches -> `_step` -> log / evaluate / save.

Policy (what to train, when to score the tasks, when to stop for forgetting) lives in the recipes,
which hear from the loop through `Hooks`; this file is mechanism.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from retune.config import TrainerConfig
from retune.data.batching import batch_indices
from retune.data.packing import micro_batches
from retune.data.templates import Encoded
from retune.objectives import SFT, Objective
from retune.retention.base import Regularizer
from retune.train import distributed as dist
from retune.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint, save_weights
from retune.train.optim import make_optimizer, make_scheduler, total_steps
from retune.train.threads import Governor
from retune.types import Accelerator, Model


@dataclass
class StepResult:
    """What one optimizer step measured, summed over processes."""

    loss: float  # the objective's loss of the step (sft: token NLL per labelled token, task-weighted), penalties excluded
    penalties: dict[str, float]  # {regularizer name: its penalty}, for those that returned a term
    tokens: int  # non-pad tokens of the global batch
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's own, per unit (dpo: reward accuracy, margin)


def _noop(*args: Any) -> None:
    return None


def _never(*args: Any) -> bool:
    return False


@dataclass
class Hooks:
    """What a recipe hears from the loop; every hook defaults to a no-op."""

    log: Callable[[dict], None] = _noop  # every metrics row (the loop calls it on rank 0 only)
    on_start: Callable[[int, int], None] = _noop  # (total_steps, steps_already_done)
    on_step: Callable[[LoopState, StepResult], None] = _noop  # after each optimizer step (progress bars)
    on_eval: Callable[[Model, LoopState], bool] = _never  # after each validation (rank 0's answer is broadcast); True stops
    on_end: Callable[[], None] = _noop  # once on_start was called: always, also on error / Ctrl-C


@dataclass
class _Run:
    """What stays fixed through one `fit`: the prepared model and optimizer, and where things go."""

    model: Any  # as the engine wrapped it (DDP, FSDP, DeepSpeed) or the model itself
    plain: Model  # unwrapped: what regularizers and checkpoints see (no DDP forward of their own)
    optimizer: Any  # torch's, or DeepSpeed's own (check_engine)
    scheduler: Any
    accelerator: Accelerator
    grad_scale: float  # the engines average gradients over processes; retune's loss is a sum
    cfg: TrainerConfig
    pad_id: int
    regularizers: Sequence[Regularizer]
    ckpt_dir: Path
    objective: Objective  # the stage type: how examples batch, the loss, the validation sums
    pack_to: int | None = None  # packed rows of this many tokens (data/packing.py); None: padded micro-batches


def fit(
    model: Model,
    train: list[Encoded] | Callable[[int], list[Encoded]],
    val: list[Encoded] | dict[str, list[Encoded]],
    cfg: TrainerConfig,
    pad_id: int,
    accelerator: Accelerator,
    ckpt_dir: Path,
    regularizers: Sequence[Regularizer] = (),
    hooks: Hooks | None = None,
    resume: bool = False,
    objective: Objective = SFT,
    pack_to: int | None = None,
) -> LoopState:
    """Train for cfg's steps; returns where the loop stopped (with the best weights loaded if asked).

    `train` is a list, or a function epoch -> that epoch's examples (a multi-task mix drawn afresh
    each epoch; data/mixing.py); every epoch has the same size. `val` is a list, or {task: list} when
    each task's validation loss is logged too (early stopping follows the pooled loss). `objective`
    is the stage type (objectives/): sft's token loss unless a preference stage's is given.
    `pack_to`: run each step's examples as packed rows of at most that many tokens (the caller has
    checked that packing is exact for this model and objective: session.packing_width).
    """
    hooks = hooks or Hooks()
    log = hooks.log if dist.is_main() else _noop  # metrics are written once, by rank 0
    epoch_examples = train if callable(train) else (lambda epoch: train)
    # One optimizer step consumes a global batch of batch_size x grad_accum examples, split into
    # micro-batches: the same examples meet in a step whatever the split (1x8 == 8x1).
    global_batch = cfg.batch_size * cfg.grad_accum
    steps = total_steps(cfg, len(epoch_examples(0)))
    run = _prepare(model, cfg, steps, accelerator, pad_id, regularizers, ckpt_dir, objective)
    run.pack_to = pack_to
    state = LoopState()
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None:
        state = _resume(run, ckpt)
        log({"event": "resumed", "step": state.step, "checkpoint": ckpt.name, "processes": dist.world()})

    hooks.on_start(steps, state.step)
    # trainer.threads unset: the thread count follows the cores other processes leave free (threads.py)
    governor = Governor(torch.get_num_threads()) if cfg.threads is None else None
    try:
        while state.step < steps and not state.stopped_early:
            pool = epoch_examples(state.epoch)
            batches = batch_indices([objective.length(e) for e in pool], global_batch, cfg.seed, state.epoch)
            for batch in batches[state.batch_in_epoch :]:
                t0 = time.perf_counter()
                result = _step(run, [pool[i] for i in batch])
                if governor is not None:
                    governor.step()
                state.step += 1
                state.batch_in_epoch += 1
                state.tokens += result.tokens
                state.train_seconds += time.perf_counter() - t0
                if state.step % cfg.log_every == 0 or state.step == 1:
                    log(_train_row(state, result, run.scheduler.get_last_lr()[0]))
                hooks.on_step(state, result)
                done = state.step >= steps
                if val and cfg.eval_every and (state.step % cfg.eval_every == 0 or done):
                    _validate(run, val, state, hooks.on_eval, log)
                if done or state.stopped_early or (cfg.save_every and state.step % cfg.save_every == 0):
                    _checkpoint(run, state)
                if done or state.stopped_early:
                    break
            if state.batch_in_epoch == len(batches):  # the epoch is through: the next one starts
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    except KeyboardInterrupt:
        # Ctrl-C: keep what is done. The state points at the last completed optimizer step. Under
        # several processes the others may be gone or at another step: the last periodic checkpoint stands.
        if dist.world() == 1:
            _checkpoint(run, state)
        raise
    finally:
        if governor is not None:
            governor.restore()
        hooks.on_end()
    _load_best(run, state, log)
    return state


def _step(run: _Run, examples: list[Encoded]) -> StepResult:
    """One optimizer step on a global batch: each process takes its share, the gradients are summed
    over micro-batches and processes, the penalties' hooks run, and the weights move."""
    run.model.train()
    # Normalise by the units (sft: labelled tokens; dpo: pairs) of the whole global batch (all processes),
    # so that 8 micro-batches of 1 give exactly the gradient of one batch of 8, and so do 8 processes.
    n_target = sum(run.objective.count(e) for e in examples)
    mine = dist.shard(examples)  # every process sees the same global batch and takes every world-th example
    # With fewer examples than processes this one has none; it must still join the gradient all-reduce,
    # so it runs one example with its loss weighted by zero.
    idle = not mine
    scale = 0.0 if idle else 1.0 / n_target
    run.objective.before_step(run.plain, mine, run.pad_id, run.accelerator.autocast)  # e.g. grpo's generations
    # FSDP / ZeRO-3 gather the weights in every forward: each process runs as many as the busiest (rank 0)
    forwards = -(-len(examples[:: dist.world()]) // run.cfg.batch_size) if dist.params_sharded(run.accelerator) else 1
    local = _accumulate(run, examples[:1] if idle else mine, scale, forwards)
    result = _sum_over_processes(local, [reg.name for reg in run.regularizers], run.objective.metric_names)
    for name, value in _step_penalties(run).items():
        result.penalties[name] = result.penalties.get(name, 0.0) + value
    _update(run)
    result.tokens = sum(run.objective.length(e) for e in examples)
    return result


def _accumulate(run: _Run, mine: list[Encoded], scale: float, forwards: int = 1) -> StepResult:
    """Forward and backward over this process's micro-batches, at least `forwards` of them (the extra
    ones repeat the first with weight zero); returns its share of the step's sums."""
    # packed rows of whole examples where that saves work (data/packing.py), else padded micro-batches
    micro = micro_batches(mine, run.cfg.batch_size, run.pad_id, run.pack_to, run.objective.collate)
    scales = [scale] * len(micro) + [0.0] * (forwards - len(micro))
    micro += [micro[0]] * (forwards - len(micro))
    local = StepResult(loss=0.0, penalties={}, tokens=0)
    for k, (batch, weight) in enumerate(zip(micro, scales, strict=True)):
        # gradients are all-reduced once per step, in the backward of the last micro-batch
        sync = k == len(micro) - 1
        with contextlib.nullcontext() if sync else run.accelerator.no_sync(run.model):
            with run.accelerator.autocast():
                loss = _micro_loss(run, batch, weight, local)
            run.accelerator.backward(loss * run.grad_scale if run.grad_scale != 1 else loss)
    return local


def _micro_loss(run: _Run, batch: dict[str, torch.Tensor], scale: float, into: StepResult) -> torch.Tensor:
    """A micro-batch's objective loss (sft: sum of token NLL x scale) plus each regularizer's batch
    penalty; their values (and the objective's metrics) are added to `into`."""
    loss, metrics = run.objective.loss(run.model, batch, scale)
    into.loss += loss.item()
    for name, value in metrics.items():
        into.metrics[name] = into.metrics.get(name, 0.0) + value
    for reg in run.regularizers:
        term = reg.batch_penalty(run.plain, batch, scale)
        if term is not None:
            loss = loss + term
            into.penalties[reg.name] = into.penalties.get(reg.name, 0.0) + term.item()
    return loss


def _sum_over_processes(local: StepResult, names: list[str], metric_names: Sequence[str] = ()) -> StepResult:
    """The step's sums over all processes; a penalty is reported when any process had a term for it."""
    # one all-reduce of a float64 vector laid out the same on every process: [task loss, each
    # regularizer's penalty, each regularizer's count of processes with a term, each objective metric]
    values = [local.penalties.get(n, 0.0) for n in names]
    had_term = [float(n in local.penalties) for n in names]
    metrics = [local.metrics.get(n, 0.0) for n in metric_names]
    vector = torch.tensor([local.loss, *values, *had_term, *metrics], dtype=torch.float64)
    loss, *rest = dist.all_reduce_(vector).tolist()
    summed, counts, extra = rest[: len(names)], rest[len(names) : 2 * len(names)], rest[2 * len(names) :]
    penalties = {n: v for n, v, c in zip(names, summed, counts, strict=True) if c}
    return StepResult(loss=loss, penalties=penalties, tokens=local.tokens, metrics=dict(zip(metric_names, extra, strict=True)))


def _step_penalties(run: _Run) -> dict[str, float]:
    """Back-propagate the penalties that depend on the weights only (the same on every process).

    Their backward runs after the synchronised one, outside any all-reduce, so each process adds the
    same gradient once."""
    terms = {reg.name: term for reg in run.regularizers if (term := reg.step_penalty(run.plain)) is not None}
    if terms:
        run.accelerator.backward(sum(terms.values()))
    return {name: term.item() for name, term in terms.items()}


def _update(run: _Run) -> None:
    """Clip, step the optimizer and the schedule, with the regularizers' hooks on either side."""
    for reg in run.regularizers:
        reg.before_step(run.plain)  # the gradients here are global: already summed over processes
    if run.cfg.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    for reg in run.regularizers:
        reg.after_step(run.plain)


def _train_row(state: LoopState, result: StepResult, lr: float) -> dict:
    return {
        "step": state.step,
        "epoch": state.epoch,
        "loss": result.loss,
        "lr": lr,
        "tokens": state.tokens,
        "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "threads": torch.get_num_threads(),
        **{f"penalty/{name}": value for name, value in result.penalties.items()},
        **result.metrics,
    }


# ---------------------------------------------------------------- set-up, checkpoints, validation


def _prepare(
    model: Model,
    cfg: TrainerConfig,
    steps: int,
    accelerator: Accelerator,
    pad_id: int,
    regularizers: Sequence[Regularizer],
    ckpt_dir: Path,
    objective: Objective,
) -> _Run:
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    # Data parallelism (docs/distributed.md): the config's global batch is split across processes, so
    # N processes make the update of one and a checkpoint resumes under any process count.
    grad_scale = dist.grad_scale(accelerator)
    if dist.check_engine(accelerator, cfg):  # DeepSpeed swapped in its own optimizer: schedule that one
        scheduler = make_scheduler(optimizer, cfg, steps)
    plain = accelerator.unwrap_model(wrapped)
    return _Run(wrapped, plain, optimizer, scheduler, accelerator, grad_scale, cfg, pad_id, regularizers, ckpt_dir, objective)


def _resume(run: _Run, ckpt: Path) -> LoopState:
    state, extra = load_checkpoint(ckpt, run.plain, run.optimizer, run.scheduler)
    for reg in run.regularizers:
        if reg.name in extra:
            reg.load_state_dict(extra[reg.name])
    return state


def _checkpoint(run: _Run, state: LoopState) -> None:
    # Rank 0 writes (the weights and loop position are the same everywhere; under FSDP every rank
    # takes part in gathering them); the barrier keeps any rank from going on, or reading, before the
    # checkpoint is complete.
    extra = {reg.name: reg.state_dict() for reg in run.regularizers}
    save_checkpoint(run.ckpt_dir, run.plain, run.optimizer, run.scheduler, state, run.cfg.keep_checkpoints, extra)
    dist.barrier()


def _load_best(run: _Run, state: LoopState, log: Callable[[dict], None]) -> None:
    best = run.ckpt_dir / "best.safetensors"
    if run.cfg.load_best_at_end and state.best_step is not None and state.best_step != state.step and best.exists():
        load_trainable(run.plain, load_file(str(best)))
        log({"event": "loaded_best", "step": state.best_step, "val_loss": state.best_val})


def _validate(
    run: _Run, val: list[Encoded] | dict[str, list[Encoded]], state: LoopState, on_eval: Callable[[Model, LoopState], bool], log: Callable
) -> None:
    """Validation loss (pooled, and per task when there are several) and the objective's metrics;
    best weights; early stopping."""
    groups = val if isinstance(val, dict) else {"": val}
    totals = {name: _val_sums(run, examples) for name, examples in groups.items() if examples}
    units = max(sum(t["n"] for t in totals.values()), 1.0)
    val_loss = sum(t["loss"] for t in totals.values()) / units
    per_task = {f"val_loss/{name}": t["loss"] / max(t["n"], 1.0) for name, t in totals.items()} if len(totals) > 1 else {}
    per_task |= {f"val_{m}": sum(t[m] for t in totals.values()) / units for m in run.objective.metric_names}
    if state.best_val is None or val_loss < state.best_val:
        state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
        save_weights(run.ckpt_dir / "best.safetensors", run.plain)  # rank 0 writes
    else:
        state.bad_evals += 1
        if run.cfg.early_stopping_patience and state.bad_evals >= run.cfg.early_stopping_patience:
            state.stopped_early = True
    log({"step": state.step, "val_loss": val_loss, **per_task, "best_val_loss": state.best_val, "early_stop": state.stopped_early})
    # the recipe's scoring runs on rank 0 (on every rank under FSDP: each forward gathers the weights
    # from all); rank 0's decision goes to all
    stop = bool(on_eval(run.plain, state)) if dist.is_main() or dist.params_sharded(run.accelerator) else False
    if dist.broadcast_object(stop):
        state.stopped_early = True


def _val_sums(run: _Run, val: list[Encoded]) -> dict[str, float]:
    """The objective's validation sums of `val` over all processes: {"loss", "n", each metric}."""
    batch_size, autocast, obj = run.cfg.batch_size * 2, run.accelerator.autocast, run.objective
    # Validation loss is sharded: each process scores its share with the plain model (no DDP
    # forward), then the sums are added. FSDP / ZeRO-3 weights live on all ranks, so there every
    # rank runs every forward, on all the data.
    if dist.params_sharded(run.accelerator):
        return obj.validation_sums(run.model, val, run.pad_id, batch_size, autocast)
    mine = dist.shard(val)
    keys = ["loss", "n", *obj.metric_names]
    part = obj.validation_sums(run.plain, mine, run.pad_id, batch_size, autocast) if mine else {}
    summed = dist.all_reduce_(torch.tensor([part.get(k, 0.0) for k in keys], dtype=torch.float64)).tolist()
    return dict(zip(keys, summed, strict=True))
