"""Debian package descriptions: long description -> one-line summary (a real summarisation pair).

Source: apt's `*_i18n_Translation-en*` lists (Package, Description-en: short line + indented long text),
joined with the `*_Packages*` lists for each binary package's source package, the split key: binary
packages built from one source share wording, so a source never straddles two splits.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from pathlib import Path

from retune.errors import UsageError

APT_LISTS = Path("/var/lib/apt/lists")
UPDATE_CMD = "apt-get update -o Acquire::Languages=en"

# Families whose descriptions repeat the main package's text with a boilerplate last paragraph
# ("This package contains the development files"); at most one per source package is kept.
BOILERPLATE = re.compile(
    r"^lib|-(dev|doc|docs|dbg|dbgsym|data|common|examples|tests?|headers|static|udeb)$"
    r"|^(python3?|golang|node|r-cran)-"  # language bindings that repeat the upstream text
)
SKIP_SHORT = re.compile(r"\b(transitional|dummy) package\b|\bmetapackage\b", re.I)

MAX_LONG_CHARS = 1000  # ~250 tokens: the prompt stays well inside a few hundred tokens
MIN_LONG_WORDS = 12
MAX_SHORT_CHARS = 80  # Debian policy's limit for the synopsis


def _read(path: Path) -> str:
    name = path.name
    if name.endswith(".lz4"):
        try:
            import lz4.frame
        except ImportError as e:
            raise UsageError("reading apt's lz4-compressed lists needs the lz4 package: pip install lz4") from e
        with lz4.frame.open(path) as f:
            return f.read().decode("utf-8", "replace")
    openers: dict[str, Callable[..., BufferedIOBase]] = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
    opener = openers.get(path.suffix)
    if opener is not None:
        with opener(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    return path.read_text("utf-8", "replace")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """Debian control-file stanzas as {field: value}; continuation lines keep their leading space."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line.startswith((" ", "\t")) and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def long_text(raw: str) -> str:
    """The extended description as plain text: ' .' lines are paragraph breaks, deeper indents are kept."""
    paras: list[list[str]] = [[]]
    for line in raw.split("\n"):
        body = line[1:] if line.startswith(" ") else line
        if body.strip() == ".":
            paras.append([])
        elif body.startswith((" ", "\t")):  # verbatim (lists, code): keep the line as a line
            paras[-1].append("\n" + body.rstrip())
        else:
            paras[-1].append(body.strip())
    out = []
    for p in paras:
        text = " ".join(p).replace(" \n", "\n").strip("\n ")
        if text:
            out.append(text)
    return "\n\n".join(out)


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def _lists(pattern: str, lists_dir: Path) -> list[Path]:
    return sorted(p for p in lists_dir.glob(pattern) if p.is_file())


def extract(lists_dir: Path = APT_LISTS) -> list[dict]:
    """Records {package, source, description, summary}, deduplicated; order is deterministic."""
    translations = _lists("*_i18n_Translation-en*", lists_dir)
    if not translations:
        raise UsageError(f"built-in dataset debian-descriptions needs apt's English description lists in {lists_dir}: run {UPDATE_CMD}")
    source_of: dict[str, str] = {}
    for path in _lists("*_Packages*", lists_dir):
        for st in _stanzas(_read(path)):
            if "Package" in st:
                source_of.setdefault(st["Package"], st.get("Source", st["Package"]).split(" ")[0])

    by_source: dict[str, list[dict]] = {}
    seen_pkg: set[str] = set()
    for path in translations:
        for st in _stanzas(_read(path)):
            pkg, desc = st.get("Package"), st.get("Description-en")
            if not pkg or not desc or pkg in seen_pkg:
                continue
            seen_pkg.add(pkg)
            short, _, rest = desc.partition("\n")
            short = short.strip()
            long = long_text(rest)
            if (
                not short
                or len(short) > MAX_SHORT_CHARS
                or SKIP_SHORT.search(short)
                or len(long) > MAX_LONG_CHARS
                or len(long.split()) < MIN_LONG_WORDS
            ):
                continue
            src = source_of.get(pkg, pkg)
            by_source.setdefault(src, []).append({"package": pkg, "source": src, "description": long, "summary": short})

    # Dedupe: the same text (whole, or its opening paragraph) only once over the whole set, so no
    # copy-pasted description sits in two splits; within a source the main packages are preferred and
    # at most one boilerplate-family package is kept.
    records: list[dict] = []
    seen_text: set[str] = set()
    for src in sorted(by_source):
        boilerplate_kept = False
        for r in sorted(by_source[src], key=lambda r: (bool(BOILERPLATE.search(r["package"])), len(r["package"]), r["package"])):
            is_bp = bool(BOILERPLATE.search(r["package"]))
            keys = {_norm(r["description"]), _norm(r["description"].split("\n\n")[0])}
            if keys & seen_text or (is_bp and boilerplate_kept):
                continue
            seen_text |= keys
            boilerplate_kept |= is_bp
            records.append(r)
    return records
