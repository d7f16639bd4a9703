"""Task metrics over (prediction, reference) strings. Scores are fractions in [0, 1]."""

from __future__ import annotations

import math
import re
from collections.abc import Callable


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!\"'")


def accuracy(preds: list[str], refs: list[str]) -> float:
    scores = _matches(preds, refs)
    return sum(scores) / max(1, len(scores))


exact_match = accuracy  # same comparison; named separately because configs and reports use both words


def rouge_l(preds: list[str], refs: list[str]) -> float:
    scores = _rouge_l_each(preds, refs)
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
    scores = _syntax_each(preds)
    return sum(scores) / max(1, len(scores))


def code(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Code generation without tests: syntax-valid rate and chrF against the reference code, both on
    the code itself (fences stripped, indentation normalised: generation output is stripped)."""
    return {"syntax_valid": syntax_valid(preds), "chrf": chrf([_clean_code(p) for p in preds], [_clean_code(r) for r in refs])}


def _clean_code(text: str) -> str:
    import textwrap

    from retune.evaluate.code import extract_code

    return textwrap.dedent(extract_code(text)).strip()


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
    correct = _passing_samples(samples, records, timeout, workers)
    return sum(pass_at_k(len(ss), c, k) for ss, c in zip(samples, correct, strict=True)) / max(1, len(records))


def _passing_samples(samples: list[list[str]], records: list[dict], timeout: float = 10.0, workers: int = 2) -> list[int]:
    """How many of each problem's samples pass its tests."""
    from concurrent.futures import ThreadPoolExecutor

    from retune.evaluate.code import humaneval_program
    from retune.evaluate.sandbox import run_python

    jobs = [(i, humaneval_program(rec, s)) for i, (rec, ss) in enumerate(zip(records, samples, strict=True)) for s in ss]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each run is its own process
        passed = list(pool.map(lambda job: run_python(job[1], timeout=timeout).passed, jobs))
    correct = [0] * len(records)
    for (i, _), ok in zip(jobs, passed, strict=True):
        correct[i] += ok
    return correct


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


# Per-example scores, for confidence intervals (evaluate/intervals.py). For every metric but chrF and
# BLEU their mean is exactly what `compute` reports. chrF and BLEU are corpus statistics (n-gram counts
# are pooled over the test set before the F-score / precision is taken), so the corpus score is not the
# mean of any per-example score; there each example gets its sentence-level score instead, and an
# interval built on them is an interval for the mean sentence chrF / BLEU, not for the corpus score.
SENTENCE_LEVEL = {"chrf", "bleu"}  # per-example scores whose mean is not the reported (corpus) score


def _matches(preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    return [float(normalise(p) == normalise(r)) for p, r in zip(preds, refs, strict=True)]


def _rouge_l_each(preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]


def _chrf_each(preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    """Sentence chrF of each example; their mean is NOT the corpus chrF that `chrf` reports."""
    import sacrebleu

    return [sacrebleu.sentence_chrf(p, [r]).score / 100 for p, r in zip(preds, refs, strict=True)]


def _bleu_each(preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    """Sentence BLEU of each example (sacrebleu's defaults: exp smoothing, effective order); their mean
    is NOT the corpus BLEU that `bleu` reports."""
    import sacrebleu

    return [sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in zip(preds, refs, strict=True)]


def _syntax_each(preds: list[str], refs: list[str] | None = None, records: list[dict] | None = None) -> list[float]:
    from retune.evaluate.code import is_valid_python

    return [float(is_valid_python(p)) for p in preds]


def _pass_each(preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    if records is None:
        raise ValueError("metric pass_at_1 needs the test records (tests and entry points), not only references")
    return [float(c) for c in _passing_samples([[p] for p in preds], records)]


PER_EXAMPLE: dict[str, Callable[..., list[float]]] = {
    "accuracy": _matches,
    "exact_match": _matches,
    "rouge_l": _rouge_l_each,
    "chrf": _chrf_each,
    "bleu": _bleu_each,
    "syntax_valid": _syntax_each,
    "pass_at_1": _pass_each,
}


def per_example_scores(name: str, preds: list[str], refs: list[str], records: list[dict] | None = None) -> dict[str, list[float]]:
    """Each example's score under every key `compute(name, ...)` reports (two for `code`). The mean of
    each list is that key's value from `compute`, except for the keys in SENTENCE_LEVEL (chrF, BLEU):
    those lists hold sentence-level scores, whose mean differs from the corpus score."""
    if name == "code":
        return {"syntax_valid": _syntax_each(preds), "chrf": _chrf_each([_clean_code(p) for p in preds], [_clean_code(r) for r in refs])}
    if name not in PER_EXAMPLE:
        raise ValueError(f"no per-example scores for metric {name!r}; known: {sorted(PER_EXAMPLE) + ['code']}")
    return {name: PER_EXAMPLE[name](preds, refs, records)}


def per_example(name: str, preds: list[str], refs: list[str], records: list[dict] | None = None) -> list[float]:
    """Each example's score for a single-valued metric: 0/1 for accuracy, exact_match, syntax_valid and
    pass_at_1 (one greedy completion per problem), ROUGE-L F for rouge_l; the mean is what `compute`
    reports. chrf and bleu return sentence chrF / sentence BLEU: corpus chrF and corpus BLEU are not the
    mean of sentence scores, so an interval over these lists is for the mean sentence score (see
    SENTENCE_LEVEL). `code` reports two scores: use per_example_scores."""
    if name == "code":
        raise ValueError("metric code reports two scores (syntax_valid, chrf): use per_example_scores")
    return per_example_scores(name, preds, refs, records)[name]
