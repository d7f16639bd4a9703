"""The shape of the code, checked: small functions, a loop that reads in one sitting, imports that flow
one way (README "Layout"; STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "retune"
COMPOUND = (ast.For, ast.While, ast.If, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith, ast.Match)


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC.parent)): ast.parse(p.read_text()) for p in sorted(SRC.rglob("*.py"))}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _depth(node: ast.AST) -> int:
    """Levels of nested blocks (for, while, if, with, try) below a node."""
    inner = [_depth(c) + isinstance(c, COMPOUND) for c in ast.iter_child_nodes(node)]
    return max(inner, default=0)


def _imports(tree: ast.Module) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            out.add(n.module)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


def test_no_function_over_80_lines():
    sizes = {
        f"{path}:{f.lineno} {f.name}": (f.end_lineno or f.lineno) - f.lineno + 1
        for path, tree in _modules().items()
        for f in _functions(tree)
    }
    assert not {name: n for name, n in sizes.items() if n > 80}


def test_fit_reads_in_one_sitting():
    tree = _modules()["retune/train/loop.py"]
    fit = next(f for f in _functions(tree) if f.name == "fit")
    assert _depth(fit) <= 4
    assert not any(isinstance(n, ast.While) and n.orelse for n in ast.walk(tree)), "no while ... else"
    assert "LoopIO" not in ast.unparse(tree)


@pytest.mark.parametrize(
    "layer, above",
    [
        ("retune/session", ("retune.recipes", "retune.inference", "retune.serve", "retune.cli", "retune.plan")),
        ("retune/train", ("retune.session", "retune.recipes", "retune.inference", "retune.cli")),
        ("retune/rundir.py", ("retune.session", "retune.recipes", "retune.models", "retune.train", "retune.cli")),
        (
            "retune/report",
            ("retune.session", "retune.recipes", "retune.train", "retune.models", "retune.inference", "retune.serve", "retune.cli"),
        ),
        ("retune/config", ("retune.data", "retune.models", "retune.train", "retune.session", "retune.recipes", "retune.cli")),
        ("retune/search", ("retune.recipes", "retune.cli", "retune.train")),  # a search's mechanism; the recipe runs trials
    ],
)
def test_imports_flow_one_way(layer, above):
    bad = [(path, m) for path, tree in _modules().items() if path.startswith(layer) for m in _imports(tree) if m.startswith(above)]
    assert not bad, bad


def test_only_the_cli_imports_a_recipe():
    importers = {path for path, tree in _modules().items() for m in _imports(tree) if m.startswith("retune.recipes")}
    assert importers <= {"retune/cli.py"} | {p for p in importers if p.startswith("retune/recipes/")}
    within = {p for p in importers if p.startswith("retune/recipes/")}
    assert not within, f"a recipe imports another recipe: {within}"
