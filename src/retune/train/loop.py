"""The training loop. Read it top to bottom: batches -> loss (+ retention penalties) -> step -> log/eval/save.

Policy (what to train, when to evaluate the task) lives in `retune.run`; this file is mechanism.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retune.config import TrainerConfig
from retune.data.batching import batch_indices, collate
from retune.data.templates import Encoded
from retune.evaluate.scoring import mean_nll
from retune.models.loss import training_loss
from retune.retention.base import Regularizer
from retune.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint, save_weights
from retune.train.optim import make_optimizer, make_scheduler, total_steps


@dataclass
class LoopIO:
    """Where the loop writes, and how it reports."""

    ckpt_dir: Path
    log: Callable[[dict], None]
    progress: Any = None  # rich progress-like: .update(loss=..., step=...)
    regularizers: list[Regularizer] = field(default_factory=list)  # retention methods: penalties + hooks


def fit(
    model: Any,
    train: list[Encoded] | Callable[[int], list[Encoded]],
    val: list[Encoded],
    cfg: TrainerConfig,
    pad_id: int,
    accelerator: Any,
    io: LoopIO,
    resume: bool = False,
) -> LoopState:
    # `train` is a list, or a function epoch -> that epoch's examples (a multi-task mix drawn afresh
    # each epoch; data/mixing.py). Every epoch has the same size.
    epoch_examples = train if callable(train) else (lambda epoch: train)
    # One optimizer step consumes a global batch of batch_size x grad_accum examples, split into
    # micro-batches: the same examples meet in a step whatever the split (1x8 == 8x1).
    global_batch = cfg.batch_size * cfg.grad_accum
    steps = total_steps(cfg, len(epoch_examples(0)))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = LoopState()
    ckpt = latest_checkpoint(io.ckpt_dir) if resume else None
    if ckpt is not None:
        state, extra = load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler)
        for reg in io.regularizers:
            if reg.name in extra:
                reg.load_state_dict(extra[reg.name])
        io.log({"event": "resumed", "step": state.step, "checkpoint": ckpt.name})

    def checkpoint() -> None:
        extra = {reg.name: reg.state_dict() for reg in io.regularizers}
        save_checkpoint(io.ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler, state, cfg.keep_checkpoints, extra)

    if io.progress is not None:
        io.progress.start(total=steps, done=state.step)
    try:
        while state.step < steps and not state.stopped_early:
            pool = epoch_examples(state.epoch)
            batches = batch_indices([len(e.input_ids) for e in pool], global_batch, cfg.seed, state.epoch)
            while state.batch_in_epoch < len(batches) and state.step < steps:
                model.train()
                batch = batches[state.batch_in_epoch]
                micro = [collate([pool[i] for i in batch[s : s + cfg.batch_size]], pad_id) for s in range(0, len(batch), cfg.batch_size)]
                t0 = time.perf_counter()
                # Normalise by the labelled tokens of the whole optimizer step, so that 8 micro-batches
                # of 1 give exactly the gradient of one batch of 8 (not a mean of per-batch means).
                n_target = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro)
                task_loss = 0.0  # the task's token NLL for this step, without penalties
                penalty_values: dict[str, float] = {}
                for mb in micro:
                    with accelerator.autocast():
                        # per-task loss weights, when the batch has them, scale each row (B,)
                        loss, _ = training_loss(model, mb, mb["weights"] / n_target if "weights" in mb else 1.0 / n_target)
                        task_loss += loss.item()
                        for reg in io.regularizers:
                            term = reg.batch_penalty(model, mb, 1.0 / n_target)
                            if term is not None:
                                loss = loss + term
                                penalty_values[reg.name] = penalty_values.get(reg.name, 0.0) + term.item()
                    accelerator.backward(loss)
                step_terms = [(reg.name, reg.step_penalty(model)) for reg in io.regularizers]
                step_terms = [(name, t) for name, t in step_terms if t is not None]
                if step_terms:
                    accelerator.backward(sum(t for _, t in step_terms))
                    for name, t in step_terms:
                        penalty_values[name] = penalty_values.get(name, 0.0) + t.item()
                for reg in io.regularizers:
                    reg.before_step(model)
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for reg in io.regularizers:
                    reg.after_step(model)

                state.step += 1
                state.batch_in_epoch += 1
                state.tokens += sum(int(mb["attention_mask"].sum()) for mb in micro)
                state.train_seconds += time.perf_counter() - t0
                if state.step % cfg.log_every == 0 or state.step == 1:
                    io.log(
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
                    _evaluate(model, val, pad_id, cfg, accelerator, state, io)
                if (cfg.save_every and state.step % cfg.save_every == 0) or last or state.stopped_early:
                    checkpoint()
                if state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    except KeyboardInterrupt:
        # Ctrl-C: keep what is done. The state points at the last completed optimizer step.
        checkpoint()
        raise
    finally:
        if io.progress is not None:
            io.progress.stop()

    best = io.ckpt_dir / "best.safetensors"
    if cfg.load_best_at_end and state.best_step is not None and state.best_step != state.step and best.exists():
        from safetensors.torch import load_file

        load_trainable(accelerator.unwrap_model(model), load_file(str(best)))
        io.log({"event": "loaded_best", "step": state.best_step, "val_loss": state.best_val})
    return state


def _evaluate(model: Any, val: list[Encoded], pad_id: int, cfg: TrainerConfig, accelerator: Any, state: LoopState, io: LoopIO) -> None:
    val_loss = mean_nll(model, val, pad_id, cfg.batch_size * 2, accelerator.autocast)
    improved = state.best_val is None or val_loss < state.best_val
    if improved:
        state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
        save_weights(io.ckpt_dir / "best.safetensors", accelerator.unwrap_model(model))
    else:
        state.bad_evals += 1
        if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
            state.stopped_early = True
    io.log({"step": state.step, "val_loss": val_loss, "best_val_loss": state.best_val, "early_stop": state.stopped_early})
