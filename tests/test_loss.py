"""The fused linear + cross-entropy equals the plain one, in value and in gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from retune.models import loss as loss_mod
from retune.models.loss import LinearCrossEntropy, token_nll, training_loss


@pytest.mark.parametrize("need_w", [False, True])
def test_fused_matches_plain_cross_entropy(need_w, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK", 5)  # several chunks, the last one ragged
    torch.manual_seed(0)
    h = torch.randn(13, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 16, dtype=torch.float64, requires_grad=need_w)
    y = torch.randint(0, 40, (13,))
    tw = torch.rand(13, dtype=torch.float32)
    fused, per_token = LinearCrossEntropy.apply(h, w, y, tw)
    fused.backward()
    g_h, g_w = h.grad.clone(), (w.grad.clone() if need_w else None)
    h.grad = None
    w.grad = None
    plain_tok = F.cross_entropy(h @ w.T, y, reduction="none")
    plain = (plain_tok * tw.double()).sum()
    plain.backward()
    assert torch.allclose(per_token.double(), plain_tok.detach(), atol=1e-5)
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    assert torch.allclose(g_h, h.grad, atol=1e-5)
    if need_w:
        assert torch.allclose(g_w, w.grad, atol=1e-5)


def test_training_loss_matches_model_logits(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.randint(3, 300, (3, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, 7:] = -100
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    n = int((labels[:, 1:] != -100).sum())
    loss, per_row = training_loss(model, batch, 1.0 / n)
    loss.backward()
    fused_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = F.cross_entropy(
        model(input_ids=ids).logits[:, :-1].reshape(-1, model.config.vocab_size), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    nll, counts = token_nll(model, batch)
    assert torch.allclose(per_row, nll.detach(), atol=1e-5) and counts.tolist() == [5, 5, 3]
    for k, p in model.named_parameters():
        assert torch.allclose(fused_grads[k], p.grad, atol=1e-5), k


def test_bf16_fast_path_close_to_fp32(tiny_model):
    """The bf16 autocast path gives the same loss as fp32 within bf16 tolerance."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.randint(3, 300, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.no_grad():
        fp32, _ = training_loss(model, batch, 1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = training_loss(model, batch, 1.0)
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)


def test_single_token_label_scoring_equals_general_path(tiny_model):
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = [[5, 9, 17, 30], [7, 8], [40, 41, 42, 43, 44, 45]]
    labels = [[11], [23], [57]]
    fast = scoring.label_loglik(model, prompts, labels, 0, 2, _no_autocast)
    general = scoring.label_loglik(model, prompts, [ids + [] for ids in labels] + [[1, 2]], 0, 2, _no_autocast)[:, :3]
    assert torch.allclose(fast, general, atol=1e-4)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("lora", [False, True], ids=["bf16", "bf16+lora"])
def test_label_scoring_ranks_as_fp32_and_restores_the_weights(tiny_model, monkeypatch, lora):
    """A bf16 model (with fp32 LoRA weights, under the caller's autocast or none) ranks the labels as
    its exact fp32 copy does: every prompt whose best two labels are within REFINE_MARGIN is scored in
    fp32 (all of them: the same tensor as fp32), the others keep the first pass's scores; the weights
    are bf16 again afterwards, bit for bit."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [[5, 9, 17, 30], [7, 8], [40, 41, 42, 43, 44, 45], [3, 3, 3], [60, 2, 61, 62]]
    labels = [[11], [23], [57, 3]]
    bf16_autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    with scoring.fp32_weights(model):
        reference = scoring.label_loglik(model, prompts, labels, 0, 2, _no_autocast, fp32=False)
    for autocast in (bf16_autocast, contextlib.nullcontext):
        scored = scoring.label_loglik(model, prompts, labels, 0, 2, autocast)
        after = model.state_dict()
        assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
        assert torch.equal(scored.argmax(dim=1), reference.argmax(dim=1))
        top2 = scored.topk(2, dim=1).values
        close = top2[:, 0] - top2[:, 1] < scoring.REFINE_MARGIN
        assert torch.equal(scored[close], reference[close])
    monkeypatch.setattr(scoring, "REFINE_MARGIN", float("inf"))
    assert torch.equal(scoring.label_loglik(model, prompts, labels, 0, 2, bf16_autocast), reference)
    monkeypatch.setattr(scoring, "REFINE_MARGIN", -1.0)  # no prompt refined: the first pass, its head in fp32
    first = scoring.label_loglik(model, prompts, labels, 0, 2, bf16_autocast)
    assert first.dtype == torch.float32 and not torch.equal(first, reference)
    assert (first - reference).abs().max() < 0.1


@pytest.mark.parametrize(("attention", "lora"), [("sdpa", False), ("eager", True), ("retune_eager", True)])
def test_label_scoring_runs_a_shared_prompt_start_once(tiny_model, monkeypatch, attention, lora):
    """Prompts that start alike (a chat template, an instruction): the shared tokens run once per batch
    as a key/value cache, and every label's log-probability is the full forward's (fp32, to 1e-5)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring, shared_prefix
    from retune.models import lean

    if attention == "retune_eager":
        lean.register_attention()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    if lora:  # random B: the adapter changes the outputs
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    start = list(range(5, 17))
    # batches of 3 by length: 12 shared tokens in the first (the shortest prompt keeps one token of its
    # own), 10 in the second, none in the last
    prompts = [start + [30], start + [40, 41], start + [50, 51, 52], start[:10] + [60] * 6, start + [70] * 5, start + [80] * 6]
    prompts += [[3, 4, 5] * 8, [6] * 25]
    labels = [[11], [23], [57]]
    taken = []
    shared_path = scoring._last_logits_shared
    monkeypatch.setattr(scoring, "_last_logits_shared", lambda path, p, n, pad: taken.append(n) or shared_path(path, p, n, pad))
    shared = scoring.label_loglik(model, prompts, labels, 0, 3, _no_autocast)
    assert taken == [12, 10]
    monkeypatch.setattr(shared_prefix, "MIN_SHARED_PREFIX", 10**9)
    full = scoring.label_loglik(model, prompts, labels, 0, 3, _no_autocast)
    assert torch.allclose(shared, full, atol=1e-5), (shared - full).abs().max()


@pytest.mark.parametrize(("attention", "lora"), [("sdpa", False), ("eager", True), ("retune_eager", True)])
def test_validation_nll_runs_a_shared_prompt_start_once(tiny_model, monkeypatch, attention, lora):
    """Validation examples that start alike: the shared unlabelled tokens run once per batch as a
    key/value cache, up to the position that predicts the batch's first label; every example's NLL and
    token count are the padded forward's (fp32, to 1e-5)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.data.templates import Encoded
    from retune.evaluate import scoring, shared_prefix
    from retune.models import lean

    if attention == "retune_eager":
        lean.register_attention()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    start = list(range(5, 17))

    def ex(prompt, response):
        return Encoded(prompt + response, [-100] * len(prompt) + response, len(prompt))

    # sorted by length in batches of 3: the first shares 12 tokens and its earliest label sits at index 12,
    # so 11 run shared (position 11 predicts that label); the second shares 10, its earliest label at 10:
    # 9; the last batch shares nothing
    examples = [ex(start, [30]), ex(start, [40, 41]), ex(start + [50], [51, 52])]
    examples += [ex(start[:10], [60] * 7), ex(start, [70] * 6), ex(start + [80] * 6, [81])]
    examples += [ex([3, 4, 5] * 8, [9]), ex([6] * 25, [7])]
    taken = []
    shared_path = scoring._nll_shared
    monkeypatch.setattr(scoring, "_nll_shared", lambda path, e, n, pad: taken.append(n) or shared_path(path, e, n, pad))
    shared = scoring.example_nlls(model, examples, 0, 3, _no_autocast)
    totals = scoring.nll_totals(model, examples, 0, 3, _no_autocast)
    assert taken == [11, 9, 11, 9]
    monkeypatch.setattr(shared_prefix, "MIN_SHARED_PREFIX", 10**9)
    full = scoring.example_nlls(model, examples, 0, 3, _no_autocast)
    assert shared[1] == full[1] == [len(e.labels) - e.prompt_len for e in examples]
    assert torch.allclose(torch.tensor(shared[0]), torch.tensor(full[0]), atol=1e-5)
    assert totals[0] == pytest.approx(sum(full[0]), abs=1e-4) and totals[1] == sum(full[1])


@pytest.mark.parametrize(("attention", "lora"), [("sdpa", False), ("eager", True), ("retune_eager", True)])
def test_generation_runs_a_shared_prompt_start_once(tiny_model, monkeypatch, attention, lora):
    """Greedy generation of prompts that start alike: the common start runs once per batch as a key/value
    cache (rows rearranged as start + padding + own tokens), and the texts are the plain left-padded
    batch's (fp32), for prompts of different lengths in one batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring, shared_prefix
    from retune.models import lean
    from retune.models.load import load_tokenizer

    if attention == "retune_eager":
        lean.register_attention()
    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    start = "Summarise this package description in one short line please. "
    prompts = [start + t for t in ("a tiny tool", "the long and winding road of a text editor for the terminal", "ok")]
    prompts += ["unrelated words", "nothing in common here at all"]
    taken = []
    shared_start = scoring._shared_start

    def spy(path, enc, pad):
        out = shared_start(path, enc, pad)
        taken.append(out["past_key_values"].get_seq_length() if out else 0)
        return out

    monkeypatch.setattr(scoring, "_shared_start", spy)
    shared = scoring.generate(model, tok, prompts, 12, 3, _no_autocast)
    assert taken[0] == 0 and taken[1] >= 8  # sorted by length: the unrelated prompts and "ok" first
    monkeypatch.setattr(shared_prefix, "MIN_SHARED_PREFIX", 10**9)
    plain = scoring.generate(model, tok, prompts, 12, 3, _no_autocast)
    assert shared == plain and all(shared)


def test_common_prefix_leaves_each_prompt_a_token():
    from retune.evaluate.shared_prefix import common_prefix_len

    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert common_prefix_len([[1, 2], [3, 2]]) == 0
    assert common_prefix_len([[7, 8, 9]]) == 2
