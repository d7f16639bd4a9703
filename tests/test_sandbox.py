"""Generated code runs only in the sandbox: hostile programs neither hang the run nor touch anything
outside their temporary directory; correct solutions pass and wrong ones fail."""

from __future__ import annotations

import os
import time

import pytest

from retune.data.sources import humaneval
from retune.evaluate.code import humaneval_program
from retune.evaluate.sandbox import describe, run_python


@pytest.fixture
def canary(tmp_path):
    """A path outside any sandbox directory that hostile code tries to create."""
    return tmp_path / "canary"


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout=2)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - start < 10


def test_huge_allocation_fails_fast_inside_the_memory_limit():
    start = time.monotonic()
    r = run_python("x = bytearray(64 * 2**30)\nprint('allocated')\n", memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.stderr and "allocated" not in r.stdout
    r = run_python("x = [0] * (10**10)\n", memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.stderr
    assert time.monotonic() - start < 20


def test_os_system_and_friends_touch_nothing_outside(canary):
    attempts = [
        f"import os\nos.system('touch {canary}')",
        f"import subprocess\nsubprocess.run(['touch', '{canary}'])",
        f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{canary}'], {{}})",
        f"open('{canary}', 'w').write('x')",
        f"import os\nos.close(os.open('{canary}', os.O_CREAT | os.O_WRONLY))",
        f"import pathlib\npathlib.Path('{canary}').touch()",
        f"import os\nos.chdir('{canary.parent}')\nopen('canary', 'w')",
        f"import shutil\nshutil.rmtree('{canary.parent}')",
    ]
    for code in attempts:
        r = run_python(code, timeout=5)
        assert r.status == "failed" and "PermissionError" in r.stderr, (code, r.stderr)
        assert not canary.exists(), code
        assert canary.parent.exists()  # the rmtree attempt removed nothing


def test_catching_the_refusal_does_not_help(canary):
    r = run_python(f"import os\ntry:\n    os.system('touch {canary}')\nexcept PermissionError:\n    pass\nprint('done')\n")
    assert r.passed and r.stdout.strip() == "done"  # the program goes on; the command never ran
    assert not canary.exists()


def test_network_is_blocked():
    r = run_python("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n", timeout=5)
    assert r.status == "failed" and ("PermissionError" in r.stderr or "OSError" in r.stderr)


def test_writes_inside_the_sandbox_work_and_the_environment_is_clean(monkeypatch):
    monkeypatch.setenv("RETUNE_TEST_SECRET", "hunter2")
    r = run_python("import os\nopen('scratch.txt', 'w').write('hi')\nprint(open('scratch.txt').read(), sorted(os.environ), os.getcwd())\n")
    assert r.passed, r.stderr
    assert r.stdout.startswith("hi") and "RETUNE_TEST_SECRET" not in r.stdout and "hunter2" not in r.stdout
    cwd = r.stdout.split()[-1]
    assert "retune-sandbox-" in cwd and not os.path.exists(cwd)  # a fresh temporary directory, removed afterwards


def test_early_exit_is_not_a_pass():
    assert run_python("import sys\nsys.exit(0)\nassert False\n").status == "failed"
    assert run_python("import os\nos._exit(0)\n").status == "failed"


def test_correct_solution_passes_and_wrong_one_fails():
    p = humaneval.problems()[0]
    good = run_python(humaneval_program(p, p["canonical_solution"]))
    assert good.passed, good.stderr
    bad = run_python(humaneval_program(p, "    return False\n"))
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_describe_names_the_isolation():
    text = describe()
    assert "network" in text and "rlimits" in text
