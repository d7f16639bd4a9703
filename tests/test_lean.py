"""The memory-lean autograd functions (models/lean.py) compute what the layers they replace compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retune.models import lean


def _grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


def _close(a, b, tol=1e-9):
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=tol, rtol=tol), (x - y).abs().max()


def test_rmsnorm_matches_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = LlamaRMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        ref.weight.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    out_ref = ref(x)
    out = lean.RMSNormFn.apply(x, ref.weight, ref.variance_epsilon)
    # the reference computes in fp32 internally (x.to(float32)); so does the lean one
    assert torch.allclose(out, out_ref, atol=1e-5)
    _close(_grads(out, (x, ref.weight)), _grads(out_ref, (x, ref.weight)), tol=1e-4)


def test_silu_mul_matches_autograd():
    gate = torch.randn(4, 7, 32, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 7, 32, dtype=torch.float64, requires_grad=True)
    out = lean.SiluMulFn.apply(gate, up)
    ref = F.silu(gate) * up
    _close((out,), (ref,))
    _close(_grads(out, (gate, up)), _grads(ref, (gate, up)))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_attention_matches_eager_with_padding_and_groups(heads, kv_heads):
    b, t, d = 2, 9, 8
    q = torch.randn(b, heads, t, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, kv_heads, t, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, kv_heads, t, d, dtype=torch.float64, requires_grad=True)
    allowed = torch.ones(t, t, dtype=torch.bool).tril().expand(b, 1, t, t).clone()
    allowed[1, :, :, 6:] = False  # the second row is padded after 6 tokens
    allowed[1, :, 6:, 0] = True  # (padded queries still see one key, as transformers' masks do)
    mask = torch.zeros(b, 1, t, t, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    out = lean.AttentionFn.apply(q, k, v, mask, d**-0.5)
    rep = heads // kv_heads
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    ref = (torch.softmax(q @ kk.transpose(-1, -2) * d**-0.5 + mask, -1) @ vv).transpose(1, 2)
    # the softmax runs in fp32, as in transformers' eager attention
    assert torch.allclose(out, ref, atol=1e-5)
    _close(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), tol=1e-5)


def test_dropped_linear_is_dropout_then_linear_with_the_same_mask():
    x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    out = lean.DroppedLinearFn.apply(x, w, 0.3)
    torch.manual_seed(5)
    keep, rate = lean.keep_mask(x.shape, 0.3)
    ref = (x * keep / (1 - rate)) @ w.T
    _close((out,), (ref,))
    _close(_grads(out, (x, w)), _grads(ref, (x, w)))


def test_keep_mask_rate_and_determinism():
    torch.manual_seed(0)
    keep, rate = lean.keep_mask(torch.Size([1000, 1001]), 0.05)
    assert abs(rate - 0.05) < 1 / 65536
    assert abs((1 - keep.float().mean().item()) - rate) < 0.002  # 1M draws
    torch.manual_seed(0)
    again, _ = lean.keep_mask(torch.Size([1000, 1001]), 0.05)
    assert torch.equal(keep, again)


def _lora_model(tiny_model, dropout: float):
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="eager")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", init_lora_weights="gaussian")
    model = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _loss_and_grads(model, ids, mask):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_apply_on_a_lora_llama_keeps_loss_gradients_and_state_dict(tiny_model):
    torch.manual_seed(0)
    model = _lora_model(tiny_model, dropout=0.0)
    model.train()
    ids = torch.randint(3, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    loss_ref, g_ref = _loss_and_grads(model, ids, mask)
    keys = set(model.state_dict())
    counts = lean.apply(model)
    assert counts["rmsnorm"] == 2 * 2 + 1 and counts["swiglu"] == 2 and counts["attention"] == 1
    loss, g = _loss_and_grads(model, ids, mask)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    for name in g_ref:
        assert torch.allclose(g[name], g_ref[name], atol=1e-6, rtol=1e-4), name
    assert set(model.state_dict()) == keys  # adapters save and load as before


def test_lora_dropout_is_folded_and_off_in_eval(tiny_model):
    torch.manual_seed(0)
    model = _lora_model(tiny_model, dropout=0.1)
    ids = torch.randint(3, 300, (2, 10))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    counts = lean.apply(model)
    assert counts["lora_dropout"] == 2 * 7  # q k v o gate up down in each of 2 layers
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    model.train()
    torch.manual_seed(1)
    a = model(input_ids=ids).logits
    torch.manual_seed(2)
    b = model(input_ids=ids).logits
    assert not torch.allclose(a, b)  # dropout acts in training


def test_left_padded_generation_of_an_fp32_model_under_bf16_autocast(tiny_model):
    """Full fine-tuning keeps fp32 weights and runs under bf16 autocast. The fp32 mask's minimum is -inf in
    bf16: a fully masked (left-padded) row became NaN and reached every real position through its values,
    so batched generation after full fine-tuning returned empty text. Lean and stock eager must agree."""
    from transformers import AutoModelForCausalLM

    from retune.models import lean

    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])  # row 0 is left-padded
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    outs = []
    for use_lean in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="eager").eval()
        if use_lean:
            assert lean.apply(model)["attention"] == 1
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(model(input_ids=ids, attention_mask=mask).logits.float())
    stock, leaned = outs
    assert torch.isfinite(leaned[mask.bool()]).all()
    assert torch.allclose(leaned[mask.bool()], stock[mask.bool()], atol=0.1)  # bf16 rounding, same maths
