"""Data parallelism on existing engines: rank-aware helpers and the `--nproc` launcher.

The engines do the work: torch.distributed (gloo on CPU, nccl on GPUs) under Accelerate, which wraps
the model as DDP, FSDP or DeepSpeed according to how it was launched (`accelerate launch`, torchrun,
or `retune train --nproc N`, which is torchrun). This module only says who this process is, sums
tensors across ranks, and starts the processes. Every helper is a no-op without a process group,
so single-process code calls them unconditionally.

Retention methods use it like this (see docs/distributed.md):
    fisher = ...  # this rank's sum of squared gradients over its share (`shard(examples)`)
    all_reduce_(fisher); fisher /= total_examples   # the same Fisher on every rank
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
import torch.distributed as dist

from retune.errors import UsageError
from retune.types import Accelerator

if TYPE_CHECKING:
    from retune.config import RetuneConfig, TrainerConfig

T = TypeVar("T")


def launched() -> bool:
    """Started by torchrun / accelerate launch / mpirun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_world() -> int:
    """Processes on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init() -> None:
    """Join the process group when launched (Accelerate picks gloo on CPU, nccl on GPUs)."""
    if launched() and not active():
        from accelerate import PartialState

        # without a GPU, Accelerate treats a torchrun launch as distributed only when told it is on CPU
        PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max/min) `t` across ranks in place and return it. nccl needs the tensor on the GPU;
    gloo takes CPU tensors: the copy there and back is made here, so callers keep their device."""
    if not active():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        buf = t.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(buf, ops[op])
        t.copy_(buf)
    else:
        dist.all_reduce(t, ops[op])
    return t


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor across ranks in place (e.g. per-rank Fisher sums and example counts)."""
    for t in tensors:
        all_reduce_(t)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s value of a picklable object, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: every world()-th item from rank(). The same split on every call."""
    return list(items[rank() :: world()])


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 first, then on the others (e.g. a download or conversion into a cache)."""
    if not is_main():
        barrier()
    out = fn()
    if is_main():
        barrier()
    return out


def agree(make: Callable[[], T]) -> T:
    """Rank 0 makes the value (e.g. creates the run directory); every rank gets it."""
    # only rank 0 makes the value; the None the others send is replaced by rank 0's
    return cast(T, broadcast_object(make() if is_main() else None))


def grad_scale(accelerator: Accelerator) -> float:
    """Factor on the loss before backward so that N processes make the update of one.

    retune's loss is a global sum (each rank's share is normalised by the labelled tokens of the
    whole global batch), so the per-rank gradients must be summed; DDP, FSDP and DeepSpeed average
    them over ranks, and DeepSpeed further divides by its own gradient_accumulation_steps."""
    scale = float(world())
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        scale *= float(plugin.deepspeed_config.get("gradient_accumulation_steps", 1) or 1)
    return scale


def check_engine(accelerator: Accelerator, cfg: TrainerConfig) -> bool:
    """True under DeepSpeed, after checking that the config suits it: DeepSpeed steps the optimizer
    inside each backward, so each process must make exactly one backward per step."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is None:
        return False
    if cfg.grad_accum != world():
        raise UsageError(
            f"DeepSpeed makes one backward per optimizer step: set trainer.grad_accum={world()} (the process count), "
            f"so each process takes one micro-batch of trainer.batch_size (global batch {cfg.batch_size * world()})"
        )
    return True


# What `accelerate launch` sets from an FSDP config (examples/accelerate/fsdp.yaml): FSDP2 (torch's
# fully_shard), full shard, one unit per decoder layer (the model's _no_split_modules), full state dicts.
# `retune train --nproc N --fsdp` sets the same for its processes.
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",  # every rank loads the weights (transformers reads this too)
}


def fsdp_requested() -> bool:
    return launched() and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Accelerate keeps FSDP for GPU process types only: on CPU (gloo) its state drops the FSDP plugin
    the launcher asked for (accelerate/state.py) and the run would silently be DDP. torch's fully_shard
    runs on CPU, so the plugin is put back: Accelerate's FSDP2 path then prepares, clips and no_syncs."""
    from accelerate import FullyShardedDataParallelPlugin, PartialState
    from accelerate.utils import DistributedType

    if not fsdp_requested() or accelerator.device.type != "cpu" or getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables (FSDP2: check_fsdp)
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # as AcceleratorState does itself: every later AcceleratorState() copies PartialState's type back
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def check_fsdp(cfg: RetuneConfig, asked: bool | None = None) -> None:
    """What runs under FSDP (`asked`, default: this process was launched with it): one supervised fit
    (LoRA or full fine-tuning), retain: sets and replay included. Penalties read every weight on every
    rank, and stages and preference objectives hand the weights between fits: not under FSDP yet."""
    if not (fsdp_requested() if asked is None else asked):
        return
    if fsdp_requested() and not torch.cuda.is_available() and os.environ.get("FSDP_VERSION") != "2":
        raise UsageError("FSDP on CPU runs as FSDP2 (torch's fully_shard): set fsdp_version: 2 in the Accelerate config")
    methods = [m.method for m in cfg.retention if m.method != "replay"]
    why = "stages:" if cfg.stages else f"objective: {cfg.objective.type}" if cfg.objective.type != "sft" else None
    why = why or (f"retention: {methods[0]}" if methods else None)
    if why:
        raise UsageError(f"{why} is not supported under FSDP yet: drop it, or train with --nproc without --fsdp (DDP)")


def engine(accelerator: Accelerator) -> str:
    """How the processes share the work: summary.json `train.engine`."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    return f"{kind} x{world()}" if active() else "single process"


def params_sharded(accelerator: Accelerator) -> bool:
    """FSDP and ZeRO-3 split the weights across ranks: every rank must take part in each forward."""
    kind = str(accelerator.distributed_type)
    if kind.endswith("FSDP"):
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def quiet_off_main() -> Iterator[None]:
    """Only rank 0 prints progress and tables (stdout and stderr). Errors that end a rank are
    printed after this block, by the CLI, so every rank's failure is still seen."""
    if not launched() or os.environ.get("RANK", "0") == "0":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]  # at the descriptors: rich consoles and libraries hold their own handles
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.close(null)


# ------------------------------------------------------------------ launcher


class LaunchFailed(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launch(module_args: list[str], nproc: int, env: dict[str, str] | None = None) -> None:
    """Run `python -m <module_args>` in `nproc` local processes under torchrun (torch's elastic
    launcher: a free port, no restarts). If any process fails, torchrun stops the others and this
    raises LaunchFailed with one line that names the first rank that died and how."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its failure table is replaced by one line
    os.environ.update(env or {})
    # each process uses its share of the cores (retune's setup_torch reads LOCAL_WORLD_SIZE)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (len(os.sched_getaffinity(0)) // nproc))))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.2", "-m", *module_args])
    try:
        run(args)
    except ChildFailedError as e:
        raise LaunchFailed(*_describe(e.failures, nproc)) from None


# Signals that kill a process from outside or for its own fault: the cause of a failed run. SIGABRT
# is often a consequence (a rank that lost its peer aborts while tearing down the process group);
# SIGTERM is torchrun stopping the others.
CAUSES = {signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGINT}


def _describe(failures: dict[int, Any], nproc: int) -> tuple[str, int]:
    # Order of blame: killed by a causing signal, by another signal, an exit code other than 1, exit 1
    # (lost its peer in a collective), torchrun's SIGTERM last; the earliest among equals.
    def key(item: tuple[int, Any]) -> tuple[int, int]:
        _, f = item
        sig = -f.exitcode if f.exitcode < 0 else None
        if sig in CAUSES:
            return (0, f.timestamp)
        if sig == signal.SIGTERM:
            return (4, f.timestamp)
        if sig is not None:
            return (1, f.timestamp)
        return (2 if f.exitcode != 1 else 3, f.timestamp)

    rank_, f = min(failures.items(), key=key)
    if f.exitcode < 0:
        how = f"was killed by {signal.Signals(-f.exitcode).name}"
        code = 1
    else:
        how = f"exited with code {f.exitcode}"
        code = 2 if f.exitcode == 2 else 1
    return f"training process rank {rank_} of {nproc} {how} (pid {f.pid}); torchrun stopped the others", code
