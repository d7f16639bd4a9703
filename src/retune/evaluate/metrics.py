"""Task metrics over (prediction, reference) strings. Scores are fractions in [0, 1]."""

from __future__ import annotations

import math
import re


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


METRICS = {"accuracy": accuracy, "exact_match": exact_match, "rouge_l": rouge_l}
