"""Generated code -> something to parse or run: strip Markdown fences, restore a body's indentation,
and assemble a HumanEval program (prompt + completion + tests) for the sandbox."""

from __future__ import annotations

import ast
import re
import textwrap
import warnings

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(text: str) -> str:
    """The first fenced code block if the model wrote one (chat models usually do), else the text."""
    m = _FENCE.search(text)
    return m.group(1).rstrip() if m else text.rstrip()


def as_body(code: str, indent: str = "    ") -> str:
    """Code meant as a function body, indented as one: generation output is stripped, which loses the
    first line's indentation, and models often write the body at column 0."""
    lines = code.split("\n")
    rest = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    if lines and lines[0] and not lines[0][0].isspace() and rest and min(rest) > 0:
        lines[0] = " " * min(rest) + lines[0]  # only the first line lost its indent
        return "\n".join(lines)
    dedented = textwrap.dedent(code)
    return textwrap.indent(dedented, indent)


def _parses(code: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def is_valid_python(text: str) -> bool:
    """Parses as a module, or as the body of a function (a generated function body is not a module)."""
    code = extract_code(text)
    if not code.strip():
        return False
    return _parses(code) or _parses("def _():\n" + as_body(code))


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def humaneval_program(problem: dict, completion: str) -> str:
    """prompt + completion + the problem's tests + check(entry_point). A completion that writes the
    whole function replaces the prompt's stub (the prompt stays first for its imports and helpers)."""
    code = extract_code(completion)
    if defines(code, problem["entry_point"]):
        solution = problem["prompt"] + "\n    pass\n\n" + code
    else:
        solution = problem["prompt"] + as_body(code)
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
