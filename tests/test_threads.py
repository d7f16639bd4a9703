"""The thread governor (train/threads.py): threads follow the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from retune.train import threads


@pytest.fixture
def clock(monkeypatch):
    """A fake machine: per 1-second tick, the cores' busy seconds and this process's CPU seconds."""
    state = {"t": 0.0, "busy": 100.0, "own": 10.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: state["t"])
    monkeypatch.setattr(threads, "busy_seconds", lambda cpus: state["busy"])
    monkeypatch.setattr(threads, "own_seconds", lambda: state["own"])
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})

    def tick(own: float, others: float) -> None:
        state["t"] += 1.0
        state["own"] += own
        state["busy"] += own + others

    before = torch.get_num_threads()
    yield tick
    torch.set_num_threads(before)


def test_threads_follow_the_free_cores(clock):
    torch.set_num_threads(2)
    gov = threads.Governor(cores=2)
    clock(own=2.0, others=0.0)
    assert gov.step() is None and torch.get_num_threads() == 2  # idle machine: both cores
    clock(own=1.3, others=0.7)  # a competitor takes its fair share of a core
    assert gov.step() == 1 and torch.get_num_threads() == 1
    clock(own=1.0, others=1.0)  # it keeps its core: one thread stays
    assert gov.step() is None and torch.get_num_threads() == 1
    clock(own=1.0, others=0.05)  # it stopped
    assert gov.step() == 2 and torch.get_num_threads() == 2
    clock(own=0.2, others=0.0)
    gov.last = (gov.last[0] + 0.5, *gov.last[1:])  # under a second since the last look: no new measure
    assert gov.step() is None
    torch.set_num_threads(1)
    gov.restore()
    assert torch.get_num_threads() == 2


def test_a_share_of_the_cores_counts_sibling_ranks(clock):
    """Two ranks of one core each on two cores: the sibling's load is expected, one thread stays."""
    torch.set_num_threads(1)
    gov = threads.Governor(cores=1)
    clock(own=1.0, others=1.0)
    assert gov.step() is None and torch.get_num_threads() == 1


def test_busy_seconds_reads_this_machine():
    import os

    a = threads.busy_seconds(os.sched_getaffinity(0))
    assert a is not None and a > 0
    assert threads.busy_seconds(set()) == 0
