"""Confidence intervals (Wilson, bootstrap, paired bootstrap) and the per-example scores they are built on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retune.data.sources import humaneval
from retune.errors import UsageError
from retune.evaluate import metrics
from retune.evaluate.intervals import bootstrap_mean, format_pm, interval, paired_bootstrap, wilson


def test_wilson_matches_the_published_value_and_the_closed_form():
    # 81 of 263 at 95%: (0.2553, 0.3662), the worked example in Wikipedia's "Binomial proportion confidence interval"
    low, high = wilson(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-5) and high == pytest.approx(0.3662, abs=5e-5)
    # the closed form, written independently: roots in p of (p̂ - p)² = z² p (1 - p) / n, at 90%
    z, n, k = 1.6448536269514722, 40, 31
    a, b, c = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
    roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    assert wilson(k, n, confidence=0.90) == pytest.approx(tuple(roots), abs=1e-12)


@pytest.mark.parametrize("n", [1, 5, 30, 1000])
def test_wilson_stays_in_the_unit_interval_at_zero_and_n(n):
    low, high = wilson(n, n)
    assert 0.0 < low < high == 1.0
    assert wilson(0, n) == (0.0, pytest.approx(1 - low))  # mirror image: 0 of n successes is n of n failures
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(n + 1, n)
    with pytest.raises(ValueError):
        wilson(0, n, confidence=1.0)


def _paired(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """base ~ Bernoulli(0.6); final = base with a known 10% of the examples flipped from 0 to 1."""
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < 0.6).astype(float)
    final = base.copy()
    zeros = np.flatnonzero(base == 0)
    final[rng.choice(zeros, size=n // 10, replace=False)] = 1.0
    return base, final


def test_paired_bootstrap_is_centred_on_the_true_difference_and_narrows_with_n():
    widths = []
    for n in (100, 400, 1600):
        base, final = _paired(n)
        diff, low, high = paired_bootstrap(base, final)
        assert diff == pytest.approx(0.1, abs=1e-12) and low < 0.1 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.3)  # ~ 1 / sqrt(n)
    # pairing cancels what the two share: narrower than either model's own interval
    base, final = _paired(400)
    assert widths[1] < min(np.subtract(*bootstrap_mean(final)[::-1]), np.subtract(*bootstrap_mean(base)[::-1]))
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(base, final[:-1])


def test_bootstrap_is_deterministic_under_a_seed_and_covers_the_mean():
    scores = np.random.default_rng(1).random(300).tolist()
    assert bootstrap_mean(scores, seed=3) == bootstrap_mean(scores, seed=3)
    assert bootstrap_mean(scores, seed=3) != bootstrap_mean(scores, seed=4)
    low, high = bootstrap_mean(scores)
    assert low < float(np.mean(scores)) < high
    assert bootstrap_mean(scores, confidence=0.5)[1] - bootstrap_mean(scores, confidence=0.5)[0] < high - low
    assert bootstrap_mean([0.3] * 10) == pytest.approx((0.3, 0.3))
    with pytest.raises(ValueError):
        bootstrap_mean([])


def test_interval_picks_wilson_for_proportions_and_bootstrap_otherwise():
    got = interval("accuracy", [1, 0, 1, 1] * 25)
    assert got == {"n": 100, "mean": 0.75, "low": pytest.approx(wilson(75, 100)[0]), "high": wilson(75, 100)[1], "method": "wilson"}
    got = interval("rouge_l", [0.2, 0.5, 0.9, 0.4] * 10)
    assert got["method"] == "bootstrap" and got["mean"] == pytest.approx(0.5) and got["low"] < 0.5 < got["high"]
    assert interval("chrf", [0.2, 0.5, 0.9, 0.4])["method"] == "sentence-bootstrap"
    assert interval("accuracy", []) == {"n": 0, "mean": 0.0, "low": 0.0, "high": 1.0, "method": "wilson"}


def test_format_pm_uses_plus_minus_when_symmetric_and_bounds_when_not():
    assert format_pm(0.842, 0.813, 0.871) == "84.2 ± 2.9"
    assert format_pm(0.975, 0.931, 0.992) == "97.5 [93.1, 99.2]"
    assert format_pm(-0.012, -0.034, -0.001) == "-1.2 [-3.4, -0.1]"
    assert format_pm(0.5, 0.5, 0.5) == "50.0 ± 0.0"


PREDS = ["The cat sat.", "a dog", "Paris", "blue whale swims deep", "  forty two "]
REFS = ["the cat sat", "the dog ran", "paris", "a blue whale swims in the deep sea", "Forty-two"]


@pytest.mark.parametrize("name", ["accuracy", "exact_match", "rouge_l", "syntax_valid"])
def test_per_example_mean_is_what_compute_reports(name):
    scores = metrics.per_example(name, PREDS, REFS)
    assert len(scores) == len(PREDS)
    assert float(np.mean(scores)) == pytest.approx(metrics.compute(name, PREDS, REFS)[name], abs=1e-12)


def test_per_example_values():
    assert metrics.per_example("accuracy", PREDS, REFS) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert metrics.per_example("rouge_l", PREDS, REFS)[0] == pytest.approx(1.0)


def test_sentence_level_scores_are_per_example_but_not_the_corpus_score():
    for name in sorted(metrics.SENTENCE_LEVEL):
        scores = metrics.per_example(name, PREDS, REFS)
        assert len(scores) == len(PREDS) and all(0.0 <= s <= 1.0 for s in scores)
        assert metrics.per_example(name, REFS, REFS) == pytest.approx([1.0] * len(REFS))
    # the caveat is real: mean sentence chrF differs from corpus chrF on the same strings
    assert np.mean(metrics.per_example("chrf", PREDS, REFS)) != pytest.approx(metrics.compute("chrf", PREDS, REFS)["chrf"], abs=1e-3)


def test_per_example_scores_mirror_compute_keys_for_code():
    preds, refs = ["total = sum(xs)\n    return total", "def (:"], ["    total = sum(xs)\n    return total", "return 1"]
    each = metrics.per_example_scores("code", preds, refs)
    assert set(each) == set(metrics.compute("code", preds, refs))
    assert each["syntax_valid"] == [1.0, 0.0] and each["chrf"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="per_example_scores"):
        metrics.per_example("code", preds, refs)
    with pytest.raises(ValueError, match="test records"):
        metrics.per_example("pass_at_1", preds, refs)


def test_pass_at_1_per_problem_is_zero_or_one_and_averages_to_compute():
    p = humaneval.problems()[2]  # truncate_number: return number % 1.0
    preds, records = ["return number % 1.0", "return 0.0", "return number % 1.0"], [p, p, p]
    scores = metrics.per_example("pass_at_1", preds, ["", "", ""], records)
    assert scores == [1.0, 0.0, 1.0]
    assert np.mean(scores) == pytest.approx(metrics.compute("pass_at_1", preds, ["", "", ""], records)["pass_at_1"])
    assert interval("pass_at_1", scores)["method"] == "wilson"


def test_per_example_scores_survive_texts_with_unicode_line_separators(tmp_path):
    """A review holding U+0085 (NEL) or U+2028 stays on one JSONL line (JSON leaves them unescaped with
    ensure_ascii=False); reading back splits on "\\n" only, so the scores come back whole."""
    from retune.evaluate.task_eval import Predictions, TaskScores
    from retune.io import read_jsonl
    from retune.rundir import RunDir
    from retune.session.uncertainty import read_scores, write_scores

    run = RunDir(tmp_path)
    prompts = ["plain", "a\x85b", "c\u2028d", "e\u2029f"]
    scored = TaskScores({}, {"accuracy": [1.0, 0.0, 1.0, 1.0]}, Predictions(prompts, ["x"] * 4, ["y"] * 4))
    write_scores(run, "base", "reviews", scored)
    assert read_scores(run, "base", ["reviews"]) == {"reviews": {"accuracy": [1.0, 0.0, 1.0, 1.0]}}
    assert [r["prompt"] for r in read_jsonl(run.scores_file("reviews", "base"))] == prompts
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n{"a": 2}\n{"a": ')
    with pytest.raises(UsageError, match=r"bad.jsonl line 2 is not valid JSON"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(bad, torn_tail=True) == [{"a": 1}, {"a": 2}]
