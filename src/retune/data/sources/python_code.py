"""Python functions from the CPython standard library on disk: signature + docstring -> body.

Real, reviewed code under the PSF licence. Each record keeps its module, the split key: functions of
one module share helpers and idioms, so a module never straddles two splits. Pairs that share a long
token run with a HumanEval problem are dropped (`humaneval.overlaps`), so the evaluation stays clean.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
import textwrap
import warnings
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "ensurepip", "turtledemo"}
MAX_HEADER_CHARS = 900  # signature + docstring: the prompt
MAX_BODY_CHARS = 900  # the response: with the prompt, well inside a few hundred tokens
MIN_BODY_LINES = 2


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _modules(root: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]) or rel.parts[0].startswith("config-") or rel.name.startswith("test_"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            out.append((".".join(parts), path))
    return out


def _trivial(body: list[ast.stmt]) -> bool:
    """Bodies that teach nothing: pass, ..., a bare raise NotImplementedError."""
    if len(body) != 1:
        return False
    s = body[0]
    if isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
        return True
    return isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s)


def _functions(module: str, source: str) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source)
    lines = source.split("\n")
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                rec = _pair(module, prefix + child.name, child, lines)
                if rec:
                    out.append(rec)

    visit(tree, "")
    return out


def _pair(module: str, qualname: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> dict | None:
    doc = ast.get_docstring(fn)
    if not doc or len(fn.body) < 2 or _trivial(fn.body[1:]):
        return None
    start, doc_end, end = fn.lineno - 1, fn.body[0].end_lineno, fn.end_lineno  # def line (decorators left out)
    assert doc_end is not None  # ast.parse gives every node its positions
    text = textwrap.dedent("\n".join(lines[start:end]))  # the def at column 0, the body at its own indent
    n_header = doc_end - start
    header_lines = text.split("\n")[:n_header]
    body_lines = text.split("\n")[n_header:]
    header, body = "\n".join(header_lines).rstrip(), "\n".join(body_lines).rstrip()
    body = body.lstrip("\n")
    if len(header) > MAX_HEADER_CHARS or len(body) > MAX_BODY_CHARS or body.count("\n") + 1 < MIN_BODY_LINES:
        return None
    try:  # the pair must put back together into valid code (a def whose docstring shares the def line, ...)
        ast.parse(header + "\n" + body)
    except SyntaxError:
        return None
    return {"module": module, "function": qualname, "header": header, "body": body}


def extract(root: Path | None = None, exclude: list[str] | None = None) -> list[dict]:
    """Records {module, function, header, body}; repeated headers or bodies and HumanEval overlaps removed."""
    from retune.data.sources import humaneval

    root = root or stdlib_dir()
    guard = humaneval.NgramIndex(exclude if exclude is not None else humaneval.texts())
    records: list[dict] = []
    seen: set[str] = set()
    for module, path in _modules(root):
        try:
            source = path.read_text("utf-8")
            funcs = _functions(module, source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are deliberately invalid or in another encoding
        for r in funcs:
            # a body or a prompt seen before (copied helpers, methods sharing a docstring) would put one
            # example in two splits
            keys = {hashlib.md5((part + " ".join(r[part].split())).encode()).hexdigest() for part in ("header", "body")}
            if keys & seen or guard.overlaps(r["header"] + "\n" + r["body"]):
                continue
            seen |= keys
            records.append(r)
    return records
