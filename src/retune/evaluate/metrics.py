"""Task metrics over (prediction, reference) strings. Scores are fractions in [0, 1]."""

from __future__ import annotations

import math
import re
from collections.abc import Callable


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!\"'")


def accuracy(preds: list[str], refs: list[str]) -> float:
    return sum(normalise(p) == normalise(r) for p, r in zip(preds, refs, strict=True)) / max(1, len(refs))


exact_match = accuracy  # same comparison; named separately because configs and reports use both words


def rouge_l(preds: list[str], refs: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    return sum(scores) / max(1, len(scores))


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 50.0))  # capped: a diverged model reports e^50, not inf


def chrf(preds: list[str], refs: list[str]) -> float:
    """Character n-gram F-score (Popović 2015), corpus level, via sacrebleu; robust on code and short text."""
    import sacrebleu

    return sacrebleu.corpus_chrf(preds, [refs]).score / 100 if refs else 0.0


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002) with sacrebleu's standard tokenisation."""
    import sacrebleu

    return sacrebleu.corpus_bleu(preds, [refs]).score / 100 if refs else 0.0


def syntax_valid(preds: list[str], refs: list[str] | None = None) -> float:
    """Share of predictions that parse as Python (as a module or as a function body)."""
    from retune.evaluate.code import is_valid_python

    return sum(map(is_valid_python, preds)) / max(1, len(preds))


def code(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Code generation without tests: syntax-valid rate and chrF against the reference code, both on
    the code itself (fences stripped, indentation normalised: generation output is stripped)."""
    import textwrap

    from retune.evaluate.code import extract_code

    def clean(text: str) -> str:
        return textwrap.dedent(extract_code(text)).strip()

    return {"syntax_valid": syntax_valid(preds), "chrf": chrf([clean(p) for p in preds], [clean(r) for r in refs])}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k),
    computed as a product so that large n does not overflow."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def execution_pass_at_k(samples: list[list[str]], records: list[dict], k: int = 1, timeout: float = 10.0, workers: int = 2) -> float:
    """Mean pass@k over problems: every sample is run against its problem's tests in the sandbox
    (never in this process). records carry HumanEval's prompt, test and entry_point."""
    from concurrent.futures import ThreadPoolExecutor

    from retune.evaluate.code import humaneval_program
    from retune.evaluate.sandbox import run_python

    jobs = [(i, humaneval_program(rec, s)) for i, (rec, ss) in enumerate(zip(records, samples, strict=True)) for s in ss]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each run is its own process
        passed = list(pool.map(lambda job: run_python(job[1], timeout=timeout).passed, jobs))
    correct = [0] * len(records)
    for (i, _), ok in zip(jobs, passed, strict=True):
        correct[i] += ok
    return sum(pass_at_k(len(ss), c, k) for ss, c in zip(samples, correct, strict=True)) / max(1, len(records))


def pass_at_1(preds: list[str], refs: list[str], records: list[dict]) -> float:
    """pass@1 of one (greedy) completion per problem, executed against the tests in the sandbox."""
    return execution_pass_at_k([[p] for p in preds], records, k=1)


METRICS: dict[str, Callable[..., float | dict[str, float]]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "chrf": chrf,
    "bleu": bleu,
    "syntax_valid": syntax_valid,
    "code": code,
    "pass_at_1": pass_at_1,
}
RECORD_METRICS = {"pass_at_1"}  # these also need each test record (tests, entry point), not only the reference


def compute(name: str, preds: list[str], refs: list[str], records: list[dict] | None = None) -> dict[str, float]:
    """Score predictions with a registered metric; always {name: value}, several keys for `code`."""
    fn = METRICS[name]
    if name in RECORD_METRICS:
        if records is None:
            raise ValueError(f"metric {name} needs the test records (tests and entry points), not only references")
        value = fn(preds, refs, records)
    else:
        value = fn(preds, refs)
    return value if isinstance(value, dict) else {name: value}
