"""Which malloc training runs on: the `retune` command restarts itself once with tcmalloc preloaded.

Why: glibc's malloc fragments under training's ever-changing tensor sizes (every batch has its own
length and its own number of labelled rows) and keeps what it freed. On examples/multitask.yaml the
process grew from 2.9 to 4.6 GB over 200 steps while the live tensors stayed near 2.8 GB
(malloc_trim gave 2+ GB back mid-run). tcmalloc and jemalloc reuse freed blocks by size class
instead; benchmarks/results/throughput.md has the side-by-side numbers (speed and peak RSS).

An allocator can only be chosen before the process starts (LD_PRELOAD), so `retune` re-executes
itself before torch is imported. RETUNE_ALLOCATOR picks one: auto (default: tcmalloc, else jemalloc,
else the system's), tcmalloc, jemalloc or system. Code that imports retune as a library keeps the
allocator its own process started with. Child processes (torchrun ranks) inherit the choice.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from retune.errors import UsageError

LIBRARIES = {  # Debian / Ubuntu packages: libtcmalloc-minimal4, libjemalloc2
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
_TRIED = "RETUNE_ALLOCATOR_TRIED"  # set in the re-executed process: never loop, whatever happened


def find(name: str) -> str | None:
    """The path of allocator `name`'s shared library on this machine, or None."""
    for folder in SEARCH:
        for lib in LIBRARIES[name]:
            path = Path(folder) / lib
            if path.exists():
                return str(path)
    return None


def wanted(env: dict[str, str] | os._Environ = os.environ) -> tuple[str, str | None]:
    """(allocator, library path) that RETUNE_ALLOCATOR in `env` asks for and this machine has."""
    choice = env.get("RETUNE_ALLOCATOR", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise UsageError(f"RETUNE_ALLOCATOR={choice}: use one of {', '.join(CHOICES)} (or leave it unset)")
    if choice == "system":
        return "system", None
    for name in ("tcmalloc", "jemalloc") if choice == "auto" else (choice,):
        path = find(name)
        if path:
            return name, path
    if choice != "auto":
        _warn_missing(choice)
    return "system", None


@functools.cache
def _warn_missing(choice: str) -> None:
    """Once per process: `retune plan --budget` asks for the allocator at every estimate it tries."""
    package = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}[choice]
    print(f"warning: RETUNE_ALLOCATOR={choice}: not installed (apt-get install {package}); using the system malloc", file=sys.stderr)


def active() -> str:
    """The allocator this process runs on: tcmalloc | jemalloc | system."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"


def release() -> None:
    """Hand memory this process freed back to the OS, on whichever malloc it runs. Called after a
    4-bit load, whose full-precision temporaries are never needed again. Not between training and
    the tuned model's scoring: on the multitask example that raised the run's peak (3.43 vs 3.06 GB
    on tcmalloc), since scoring could no longer reuse the blocks training had freed."""
    import ctypes

    try:
        here = ctypes.CDLL(None)  # the process's global symbols: a preloaded malloc's among them
        name = active()
        if name == "tcmalloc":
            here.MallocExtension_ReleaseFreeMemory()
        elif name == "jemalloc":
            arenas_all = ctypes.c_char_p(b"arena.4096.purge")  # MALLCTL_ARENAS_ALL
            here.mallctl(arenas_all, None, None, None, ctypes.c_size_t(0))
        elif hasattr(here, "malloc_trim"):
            here.malloc_trim(0)
    except (OSError, AttributeError):  # another libc, or a malloc without the call: nothing to do
        pass


def preload_env(env: dict[str, str] | None = None, want: tuple[str, str | None] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the wanted allocator preloaded, for a child process."""
    env = dict(os.environ if env is None else env)
    name, path = want or wanted(env)
    if path and path not in env.get("LD_PRELOAD", "").split(":"):
        env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    if name == "tcmalloc":  # tcmalloc reports every allocation over 1 GiB on stderr; retune's errors are one line
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


def reexec() -> None:
    """Restart this process on the wanted allocator, if it is not already running on it."""
    if not sys.platform.startswith("linux") or os.environ.get(_TRIED):
        return
    try:
        name, path = wanted()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if path is None or active() == name:
        return
    env = preload_env(want=(name, path))
    env[_TRIED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # cannot re-execute (unusual launcher): train on the system malloc
        return
