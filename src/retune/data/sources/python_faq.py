"""Python FAQ: real question -> answer pairs from the CPython documentation sources.

Source: the Debian package python3.11-doc ships the reStructuredText sources of the docs; each FAQ
question is a section heading and its answer the section's text. reST markup is turned into plain
text (roles and links to their words, ``literals`` to `literals`). Each record's FAQ topic
is kept for reference; the split key is the question itself (deduplicated): the 22 topics are too few
and too uneven (28 questions in one) for an 80/10/10 split by topic.
"""

from __future__ import annotations

import re
from pathlib import Path

from retune.errors import UsageError

DOC_DIRS = [Path("/usr/share/doc/python3.11/html/_sources/faq"), Path("/usr/share/doc/python3-doc/html/_sources/faq")]
INSTALL = "apt-get update && apt-get install -y python3.11-doc"
MAX_ANSWER_CHARS = 1200  # answers are cut at a paragraph boundary: the model sees a few hundred tokens

_UNDERLINE = re.compile(r"^([=\-^~\"'`#*+.:_])\1{2,}\s*$")
_CODE_ROLES = "func|meth|class|mod|attr|data|exc|const|keyword|envvar|file|option|program|samp|c:func|c:type|c:macro|c:data|c:member|opcode"
# directives whose indented content is not answer text
_DROP_BLOCKS = re.compile(
    r"^\.\. (index|contents|only|highlight|toctree|sectionauthor|moduleauthor|testsetup|testcleanup)::"
    r"|^\.\. _[^:]+:$"  # a label
)


def faq_dir() -> Path:
    for d in DOC_DIRS:
        if d.is_dir() and any(d.glob("*.rst.txt")):
            return d
    raise UsageError(f"built-in dataset python-faq needs the Python documentation sources: {INSTALL}")


def inline(text: str) -> str:
    """reST inline markup -> plain text."""
    text = re.sub(r":pep:`(\d+)[^`]*`", r"PEP \1", text)
    # :func:`~os.path.join` shows as `join`, as Sphinx renders it
    text = re.sub(
        rf":(?:{_CODE_ROLES}):`!?(~?)([^`<]*?)\s*(?:<[^`>]*>)?`",
        lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`",
        text,
    )
    text = re.sub(r":[\w:]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", text)  # :ref:`words <target>`
    text = re.sub(r":[\w:]+:`!?~?([^`]*)`", r"\1", text)  # :term:`x`, :ref:`x`
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)  # `words <url>`_
    text = re.sub(r"`([^`]+)`__?", r"\1", text)  # `words`_
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text.replace("\\ ", "")  # an escaped space only separates markup


def _body(lines: list[str]) -> str:
    """A section's lines -> plain text: drop index/label directives, keep code blocks indented."""
    out: list[str] = []
    skipping = False
    for line in lines:
        if skipping:
            if line.strip() and not line.startswith((" ", "\t")):
                skipping = False
            else:
                continue
        if _DROP_BLOCKS.match(line):
            skipping = True
            continue
        if line.startswith(".. ") and "::" not in line:
            continue  # a comment
        if re.match(r"^\.\. [\w:-]+::", line):  # note, seealso, code-block, ...: keep what is inside
            rest = line.split("::", 1)[1].strip()
            if rest and not line.startswith((".. code-block", ".. sourcecode", ".. literalinclude")):
                out.append(inline(rest))
            continue
        if line.strip() == "::":
            continue
        line = re.sub(r"(\S)\s*::$", r"\1:", line)  # "Example::" introduces a code block
        out.append(inline(line.rstrip()))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _shorten(text: str) -> str:
    paras = text.split("\n\n")
    kept = [paras[0]]
    for p in paras[1:]:
        if len("\n\n".join([*kept, p])) > MAX_ANSWER_CHARS:
            break
        kept.append(p)
    return "\n\n".join(kept).rstrip(":").rstrip() if len(kept) < len(paras) else "\n\n".join(kept)


def _sections(text: str) -> list[tuple[int, str, list[str]]]:
    """(level, title, body lines) per heading; levels in the order the underline styles first appear."""
    lines = text.split("\n")
    styles: list[str] = []
    heads: list[tuple[int, int, str]] = []  # (line index of title, level, title)
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i].strip(), lines[i + 1]
        overline = i > 0 and _UNDERLINE.match(lines[i - 1]) is not None
        if title and not lines[i].startswith(" ") and _UNDERLINE.match(under) and len(under.strip()) >= len(title):
            style = ("o" if overline else "") + under.strip()[0]
            if style not in styles:
                styles.append(style)
            heads.append((i, styles.index(style), title))
            i += 2
            continue
        i += 1
    out = []
    for k, (start, level, title) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        if k + 1 < len(heads) and _UNDERLINE.match(lines[end - 1]):
            end -= 1  # the next title's overline
        out.append((level, title, lines[start + 2 : end]))
    return out


def extract(folder: Path | None = None) -> list[dict]:
    """Records {question, answer, topic, page}; questions are headings that end with '?'."""
    folder = folder or faq_dir()
    records, seen = [], set()
    for path in sorted(folder.glob("*.rst.txt")):
        page = path.name.removesuffix(".rst.txt")
        parents: dict[int, str] = {}
        for level, title, body in _sections(path.read_text("utf-8")):
            parents[level] = title
            question = inline(title)
            if not question.endswith("?"):
                continue
            answer = _shorten(_body(body))
            key = re.sub(r"\W+", " ", question.lower()).strip()
            if not answer or key in seen:
                continue
            seen.add(key)
            topic = parents.get(level - 1, page) if level > 0 else page
            records.append({"question": question, "answer": answer, "topic": f"{page}: {inline(topic)}", "page": page})
    return records
