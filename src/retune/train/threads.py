"""CPU threads that let training slow down, not stall, when other processes want the cores.

What collapses (benchmarks/contention.py measures it): torch runs each op's parallel region on one
OpenMP thread per core, splits the work evenly and waits at a barrier for the last thread. With one
other CPU-bound process on a 2-core machine, one of the two threads shares its core with it: every
region waits for that thread, and meanwhile the thread that finished first spins at the barrier
(OpenMP's default wait policy), burning time the descheduled one needed. Measured: 0.25x the idle
tokens/s. OMP_WAIT_POLICY=PASSIVE (sleep at barriers) keeps 0.87x under load but costs a third of the
idle speed (every op then wakes its threads from sleep), so it is not the default.

The default instead: the thread count follows the cores that other processes leave free (Governor,
consulted after every optimizer step). 2 threads on an idle 2-core machine, 1 while another process
keeps a core busy (no barrier to wait at), 2 again when it stops. An explicit trainer.threads turns
it off; so does anything that reads /proc/stat unavailable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the given cores have spent busy since boot (any process, and a VM's stolen time),
    from /proc/stat; None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            total += user + nice + system + irq + softirq + steal
    return total / tick


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Governor:
    """Sets torch's thread count to the cores of this process's share that others leave free.

    Every call to `step()` after at least `interval` seconds compares the cores' busy time with this
    process's own CPU time over that interval: the rest is other processes' load."""

    def __init__(self, cores: int, interval: float = 1.0):
        self.cpus = os.sched_getaffinity(0)
        self.cores, self.interval = cores, interval
        self.last = (time.perf_counter(), busy_seconds(self.cpus), own_seconds())

    def restore(self) -> None:
        """Back to the count training started with (scoring after it runs on an idle machine's count)."""
        import torch

        torch.set_num_threads(self.cores)

    def step(self) -> int | None:
        """The thread count set now, or None when unchanged (or not measurable)."""
        import torch

        now, busy, own = time.perf_counter(), busy_seconds(self.cpus), own_seconds()
        t0, busy0, own0 = self.last
        if busy is None or busy0 is None or now - t0 < self.interval:
            return None
        self.last = (now, busy, own)
        others = max(0.0, (busy - busy0) - (own - own0)) / (now - t0)  # cores' worth of other processes' work
        # free cores: all of this process's cores but what the others use (sibling ranks included),
        # at most this process's share
        want = max(1, min(self.cores, round(len(self.cpus) - others)))
        if want == torch.get_num_threads():
            return None
        torch.set_num_threads(want)
        return want
