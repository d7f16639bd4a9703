"""Run untrusted (model-generated) Python in a separate, fenced-in process; never in-process.

The fences, outermost first (`describe()` says which ones this machine gives):
- a fresh `python -I -B` in its own session, the whole group killed at the wall-clock limit;
- when retune runs as root, the child runs as `nobody`, so file permissions guard the rest of the disk;
- a new network namespace (`unshare -rn`: only a loopback that is down) where the kernel allows it;
- rlimits set before the candidate runs: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, no core files;
- a PEP 578 audit hook, installed before the candidate is compiled, that refuses process creation
  (os.system, subprocess, exec, spawn, fork), signals, sockets, ctypes, and any write, delete,
  rename or chmod outside the run's temporary directory;
- cwd, HOME and TMPDIR in a fresh temporary directory, removed afterwards; an environment of PATH
  and LANG only, so no secret (tokens, keys) in retune's environment reaches the code.
An audit hook alone does not stop a determined attacker (CPython's docs say so); it stops the
accidents and obvious misbehaviour of generated code, and the user, namespace and limits back it up.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The child's first code: limits, then the audit hook, then the candidate. Kept in one string so the
# candidate file is the only thing written into the sandbox directory.
RUNNER = r"""
import os, resource, sys
root, mem, cpu, fsize = os.path.realpath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
token = sys.stdin.readline().strip()
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))
source = open(os.path.join(root, "candidate.py"), encoding="utf-8").read()
realpath, join, fspath = os.path.realpath, os.path.join, os.fspath
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
REFUSE = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
          "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "resource.setrlimit", "resource.prlimit", "sys.remote_exec",
          "os.setuid", "os.setgid", "os.chroot", "webbrowser.open")
PATHS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate",
         "os.utime", "os.chdir", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move")
NO_IMPORT = ("_ctypes", "_posixsubprocess")  # C entry points that skip the audited Python wrappers

def inside(p):
    if isinstance(p, int):
        return True  # an already-open descriptor: it passed this check when it was opened
    p = realpath(join(os.getcwd(), os.fsdecode(fspath(p))))
    return p == root or p.startswith(root + os.sep)

def hook(event, args):
    if event.startswith(REFUSE) or (event == "import" and args[0] in NO_IMPORT):
        raise PermissionError(f"sandbox: {event} {args[0] if event == 'import' else ''} is not allowed".replace("  ", " "))
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE)
        if writes and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox is not allowed")
    elif event in PATHS and not all(inside(a) for a in args if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

code = compile(source, "candidate.py", "exec")
del source
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:
    if e.code not in (None, 0):
        raise
    sys.exit(3)  # an early clean exit skips the tests that follow: not a pass
sys.stdout.flush()
print("\n" + token, flush=True)
"""

OUTPUT_LIMIT = 64_000  # characters of stdout / stderr kept in a result


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def error(self) -> str:
        lines = [line for line in self.stderr.strip().split("\n") if line.strip()]
        return lines[-1] if lines else ""


@dataclass(frozen=True)
class _Plan:
    prefix: tuple[str, ...]  # the network-namespace wrapper, or ()
    ids: tuple[int, int] | None  # (uid, gid) to run as, or None for retune's own


def _nobody() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


@functools.cache
def _plan() -> _Plan:
    """The strongest combination of user and network namespace that actually starts Python here."""
    users: list[tuple[int, int] | None] = [u for u in (_nobody(), None) if u] + [None]
    prefixes: list[tuple[str, ...]] = [("unshare", "-rn"), ("unshare", "-n")] if shutil.which("unshare") else []
    for ids in dict.fromkeys(users):
        for prefix in [*prefixes, ()]:
            uid, gid = ids or (None, None)
            try:
                ok = (
                    subprocess.run(
                        [*prefix, sys.executable, "-I", "-c", "pass"],
                        cwd="/",
                        env=_env("/"),
                        capture_output=True,
                        timeout=30,
                        user=uid,
                        group=gid,
                        extra_groups=[] if ids else None,
                    ).returncode
                    == 0
                )
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                return _Plan(prefix, ids)
    return _Plan((), None)


def describe() -> str:
    p = _plan()
    net = "network namespace (" + " ".join(p.prefix) + ") + audit hook" if p.prefix else "audit hook only (no network namespace here)"
    who = "as nobody" if p.ids is not None else "as the current user"
    return f"subprocess {who}; network: {net}; rlimits AS/CPU/FSIZE; writes outside a temp dir refused"


def _env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "PYTHONHASHSEED": "0"}


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024, file_mb: int = 16) -> SandboxResult:
    """Run `code` as a program in the sandbox; 'passed' means it ran to its end without an error."""
    plan = _plan()
    token = secrets.token_hex(16)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="retune-sandbox-") as box, tempfile.TemporaryDirectory(prefix="retune-sandbox-out-") as out:
        Path(box, "candidate.py").write_text(code, encoding="utf-8")
        uid, gid = plan.ids or (None, None)
        if plan.ids is not None:
            os.chown(box, *plan.ids)  # the only place the child may write
        cmd = [*plan.prefix, sys.executable, "-I", "-B", "-c", RUNNER, box, str(memory_mb << 20), str(int(timeout) + 1), str(file_mb << 20)]
        with open(Path(out, "stdout"), "w+b") as so, open(Path(out, "stderr"), "w+b") as se:
            proc = subprocess.Popen(
                cmd,
                cwd=box,
                env=_env(box),
                stdin=subprocess.PIPE,
                stdout=so,
                stderr=se,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=[] if plan.ids is not None else None,
            )
            timed_out = False
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the whole session: anything the candidate left behind goes too
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            stdout, stderr = (_tail(f) for f in (so, se))
    seconds = time.monotonic() - start
    if timed_out:
        return SandboxResult("timeout", None, stdout, stderr, seconds)
    finished = proc.returncode == 0 and stdout.rstrip().endswith(token)
    if finished:
        stdout = stdout.rstrip()[: -len(token)].rstrip("\n")
    return SandboxResult("passed" if finished else "failed", proc.returncode, stdout, stderr, seconds)


def _tail(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - OUTPUT_LIMIT))
    return f.read().decode("utf-8", "replace")
