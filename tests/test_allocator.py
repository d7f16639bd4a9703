"""The `retune` command restarts itself on tcmalloc (else jemalloc) before torch loads; RETUNE_ALLOCATOR picks."""

from __future__ import annotations

import os
import subprocess
import sys

from retune import allocator

PROBE = "from retune import allocator; allocator.reexec(); print(allocator.active(), flush=True)"


def _probe(choice: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RETUNE_ALLOCATOR", "RETUNE_ALLOCATOR_TRIED")}
    if choice is not None:
        env["RETUNE_ALLOCATOR"] = choice
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)


def test_default_is_the_best_installed_allocator():
    expected = "tcmalloc" if allocator.find("tcmalloc") else "jemalloc" if allocator.find("jemalloc") else "system"
    r = _probe(None)
    assert r.returncode == 0 and r.stdout.split() == [expected], r.stderr
    assert r.stderr == "", "no allocator chatter on stderr"


def test_system_keeps_glibc_and_named_ones_load():
    assert _probe("system").stdout.split() == ["system"]
    for name in ("tcmalloc", "jemalloc"):
        if allocator.find(name):
            assert _probe(name).stdout.split() == [name]


def test_bad_choice_is_one_line_and_exit_2():
    r = _probe("hoard")
    assert r.returncode == 2 and r.stdout == ""
    message = "error: RETUNE_ALLOCATOR=hoard: use one of auto, tcmalloc, jemalloc, system (or leave it unset)"
    assert r.stderr.strip().splitlines() == [message]


def test_preload_env_for_children():
    env = allocator.preload_env({"RETUNE_ALLOCATOR": "system", "LD_PRELOAD": "/x.so"})
    assert env["LD_PRELOAD"] == "/x.so"
    _, path = allocator.wanted({})
    env = allocator.preload_env({"LD_PRELOAD": "/x.so"})
    assert env["LD_PRELOAD"] == (f"{path}:/x.so" if path else "/x.so")
    assert allocator.preload_env(env)["LD_PRELOAD"] == env["LD_PRELOAD"], "preloaded once"


RELEASE = """
from retune import allocator
allocator.reexec()
import torch
def rss():
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) // 1024
# ~700 MB of 12 MB blocks, touched; glibc maps the first round and unmaps it on free, which raises its
# mmap threshold, so the slightly smaller second round comes from its heap, below a block kept alive
# (so free() cannot shrink the heap from the top): the fragmentation training makes
pins = []
for n in (3_000_000, 2_900_000):
    blocks = [torch.ones(n) for _ in range(60)]
    pins.append(torch.ones(n))
    peak = rss()
    del blocks
allocator.release()
print(allocator.active(), peak, rss())
"""


def test_release_hands_freed_memory_back_on_every_malloc():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RETUNE_ALLOCATOR_TRIED")}
    for name in ("system", "tcmalloc", "jemalloc"):
        if name != "system" and not allocator.find(name):
            continue
        r = subprocess.run(
            [sys.executable, "-c", RELEASE], env={**env, "RETUNE_ALLOCATOR": name}, capture_output=True, text=True, timeout=120
        )
        active, peak, after = r.stdout.split()
        assert active == name, r.stderr
        # glibc and tcmalloc keep the freed blocks until release() (jemalloc returns blocks this big itself)
        assert int(peak) - int(after) > 400, f"{name}: {peak} -> {after} MB"
