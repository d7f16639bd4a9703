"""Task metrics: text overlap (chrF, BLEU), code (syntax, pass@k) and generation with stop strings."""

from __future__ import annotations

import math

import pytest

from retune.data.sources import humaneval
from retune.evaluate import metrics
from retune.evaluate.code import as_body, extract_code, humaneval_program, is_valid_python
from retune.evaluate.scoring import cut_at_stop


def test_chrf_and_bleu_are_fractions_and_perfect_on_identity():
    refs = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog"]
    assert metrics.chrf(refs, refs) == pytest.approx(1.0)
    assert metrics.bleu(refs, refs) == pytest.approx(1.0)
    wrong = ["completely different words here", "nothing alike at all today"]
    assert 0 <= metrics.chrf(wrong, refs) < 0.3 and 0 <= metrics.bleu(wrong, refs) < 0.1


def test_syntax_valid_accepts_bodies_modules_and_fenced_code():
    assert is_valid_python("    x = 1\n    return x")
    assert is_valid_python("x = 1\n    return x")  # generation output is stripped: first line lost its indent
    assert is_valid_python("Here you go:\n```python\ndef f():\n    return 1\n```\nDone.")
    assert not is_valid_python("def f(:\n    pass")
    assert not is_valid_python("")
    assert metrics.syntax_valid(["return 1", "def (", "x = [1, 2]"]) == pytest.approx(2 / 3)


def test_code_metric_reports_both_scores():
    ref = "    total = sum(xs)\n    return total / len(xs)"
    out = metrics.compute("code", ["total = sum(xs)\n    return total / len(xs)"], [ref])
    assert out == {"syntax_valid": 1.0, "chrf": pytest.approx(1.0)}


@pytest.mark.parametrize(("n", "c", "k"), [(10, 0, 1), (10, 10, 1), (10, 3, 1), (10, 3, 5), (5, 1, 5), (200, 17, 10)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)  # Chen et al. 2021, eq. 1
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_1_is_the_fraction_correct_and_k_over_n_is_an_error():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 5 samples"):
        metrics.pass_at_k(3, 1, 5)


def test_humaneval_pass_at_1_runs_the_tests():
    problems = humaneval.problems()[:6]
    refs = [p["canonical_solution"] for p in problems]
    assert metrics.compute("pass_at_1", refs, refs, problems) == {"pass_at_1": 1.0}
    # a whole function in a fenced block (what chat models write) is accepted, a wrong one fails
    p = problems[0]
    whole = f"```python\n{p['prompt']}{p['canonical_solution']}```"
    assert metrics.pass_at_1([whole, "return True"], ["", ""], [p, p]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the test records"):
        metrics.compute("pass_at_1", refs, refs)


def test_execution_pass_at_k_over_samples():
    p = humaneval.problems()[2]  # truncate_number: return number % 1.0
    samples = [["return number % 1.0", "return 0.0", "return number % 1.0", "return 1"]]
    assert metrics.execution_pass_at_k(samples, [p], k=1) == pytest.approx(0.5)
    assert metrics.execution_pass_at_k(samples, [p], k=2) == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))


def test_program_assembly_restores_indentation():
    p = humaneval.problems()[2]
    prog = humaneval_program(p, "return number % 1.0")
    assert "    return number % 1.0" in prog and prog.rstrip().endswith(f"check({p['entry_point']})")
    assert as_body("a = 1\nb = 2") == "    a = 1\n    b = 2"
    assert extract_code("```py\nx = 1\n```") == "x = 1"


def test_stop_strings_cut_at_the_earliest():
    assert cut_at_stop("def f():\n    return 1\ndef g():", ["\ndef ", "\nclass "]) == "def f():\n    return 1"
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
    assert cut_at_stop("a###b<|im_end|>", ["<|im_end|>", "###"]) == "a"


def test_generate_honours_stop_strings_and_sampling(tiny_model):
    import contextlib

    from transformers import AutoModelForCausalLM

    from retune.evaluate.scoring import generate
    from retune.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    prompts = ["the film was", "a truly boring plot"]
    free = generate(model, tok, prompts, 12, 2, contextlib.nullcontext)
    stop = next(ch for ch in free[0][len(free[0]) // 2 :] if not ch.isspace())  # a character the greedy text contains
    cut = generate(model, tok, prompts, 12, 2, contextlib.nullcontext, stop=[stop])
    assert cut[0] == free[0][: free[0].find(stop)].strip()
    assert len(cut[0]) < len(free[0])
    import torch

    torch.manual_seed(0)
    sampled = generate(model, tok, prompts, 12, 2, contextlib.nullcontext, temperature=1.0, top_p=0.9)
    assert len(sampled) == 2 and all(isinstance(s, str) for s in sampled)
