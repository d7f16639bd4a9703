"""Memory-lean autograd for the layers whose saved tensors dominate a LoRA step on a CPU.

Measured on SmolLM2-135M (batch 8 x 256 tokens, LoRA r=16 with dropout on all linear layers), autograd
saved 3.2 GB; the largest shares were not the matmuls but what sits around them:
- LoRA dropout: peft drops the input of every adapted linear separately and keeps, per linear, the
  dropped copy (for lora_A's gradient) and the mask (as bf16) - 20 kB per token per layer, 1.2 GB;
- RMSNorm keeps an fp32 copy of its input (the residual stream) for each of its ops;
- SwiGLU keeps the gate, its SiLU and the up projection.
The functions here save only the inputs (shared between the q/k/v and gate/up adapters, which see
the same tensor) plus a 1-byte dropout mask, and recompute the rest in the backward, which costs a few
elementwise passes. Results equal the originals up to rounding (tests/test_lean.py).

Only layers whose forward is known are replaced: peft LoRA linears (not DoRA), and the RMSNorm / MLP
classes of the Llama family listed below; anything else runs as before.
"""

from __future__ import annotations

import math
import types
from typing import Any, cast

import torch
import torch.nn.functional as F

from retune.models.loss import autocast_dtype

# Modules whose forward is, to the line, Llama's (transformers marks them "Copied from LlamaRMSNorm/MLP").
RMSNORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "GraniteRMSNorm"}
SWIGLU_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GraniteMLP"}
# Models whose attention calls transformers' attention interface with Llama's eager maths.
ATTENTION_MODELS = {"llama", "mistral", "qwen2", "qwen3", "granite"}


def keep_mask(shape: torch.Size, p: float, device: Any = None) -> tuple[torch.Tensor, float]:
    """A dropout keep-mask (bool) and the exact drop rate it uses.

    Drawing one random number per element (bernoulli_) costs 4.4 ms per 2048 x 576 mask on this CPU,
    about a fifth of a LoRA step over all adapters. Here one 64-bit draw gives four 16-bit uniforms:
    2.6 ms. The rate is p rounded to 1/65536 (0.05 -> 0.050003); scaling by 1/(1 - that rate) keeps
    the expectation exact."""
    n = math.prod(shape)
    cut = round(p * 65536)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    keep = words.view(torch.int16)[:n].view(shape) >= cut - 32768
    return keep, cut / 65536


class DroppedLinearFn(torch.autograd.Function):
    """dropout(x) @ W^T, saving x (shared with other adapters on the same input) and a bool mask.
    The 1/(1-p) scale is folded into the small (r x in) weight, so the big tensors see one mask pass."""

    @staticmethod
    def forward(ctx, x, weight, p):
        dtype = autocast_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            keep, rate = keep_mask(x.shape, p, x.device)
            scale = 1.0 / (1.0 - rate)
            out = torch.where(keep, x.to(dtype), 0) @ (weight * scale).to(dtype).T
        ctx.save_for_backward(x, keep, weight)
        ctx.scale, ctx.dtype = scale, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, keep, weight = ctx.saved_tensors
        gx = gw = None
        with torch.autocast(x.device.type, enabled=False):
            g = grad.to(ctx.dtype)
            if ctx.needs_input_grad[1]:
                kept = torch.where(keep, x.to(ctx.dtype), 0).reshape(-1, x.shape[-1])
                gw = (g.reshape(-1, g.shape[-1]).T @ kept).to(weight.dtype) * ctx.scale
            if ctx.needs_input_grad[0]:
                gx = torch.where(keep, g @ (weight * ctx.scale).to(ctx.dtype), 0).to(x.dtype)
        return gx, gw, None


class DroppedLinear(torch.nn.Linear):
    """A lora_A linear with its input dropout folded in (training only); same parameters, same state dict."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_p > 0 and torch.is_grad_enabled():
            return DroppedLinearFn.apply(x, self.weight, self.dropout_p)
        return super().forward(x)


class RMSNormFn(torch.autograd.Function):
    """Llama's RMSNorm, weight * (x / rms(x)).to(x.dtype), saving x and 1/rms only."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            out = weight * (xf * rstd).to(x.dtype)
        ctx.save_for_backward(x, rstd, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            normed = x.float() * rstd
            gw = None
            if ctx.needs_input_grad[1]:
                gw = (grad * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
            gn = (grad * weight).float()
            gx = rstd * (gn - normed * (gn * normed).mean(-1, keepdim=True))
        return gx.to(x.dtype), gw, None


class SiluMulFn(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only (the SiLU is recomputed: one pass in the backward)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        g_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        g_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return g_gate, g_up


class AttentionFn(torch.autograd.Function):
    """softmax(q k^T * scale + mask) v for grouped-query attention, saving q, k and v only: the
    backward recomputes the probabilities (one more q k^T and softmax, ~3% of a step), as flash
    attention does. Eager attention keeps fp32 and bf16 (B, heads, T, T) probabilities, and k, v
    repeated per query group; here the groups are folded into the query rows: (B, KV, G*T, D).
    Same maths as transformers' eager attention; the softmax accumulates in fp32 inside its kernel."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):  # q (B, H, T, D); k, v (B, KV, S, D); mask additive (B, 1, T, S) or None
        dtype = autocast_dtype(q)
        with torch.autocast(q.device.type, enabled=False):
            q2, k2, v2 = _grouped(q, k, dtype), k.to(dtype), v.to(dtype)
            probs = _probs(q2, k2, mask, scale, q.shape[2])
            out = (probs.view(q2.shape[0], q2.shape[1], -1, k.shape[2]) @ v2).view(q.shape)
        ctx.save_for_backward(q2, k2, v2, mask)
        ctx.scale, ctx.in_dtypes, ctx.q_shape = scale, (q.dtype, k.dtype, v.dtype), q.shape
        return out.transpose(1, 2)  # (B, T, H, D), as transformers' attention functions return

    @staticmethod
    def backward(ctx, grad):  # grad (B, T, H, D)
        q2, k2, v2, mask = ctx.saved_tensors
        b, kv, gt, d = q2.shape
        with torch.autocast(q2.device.type, enabled=False):
            probs = _probs(q2, k2, mask, ctx.scale, ctx.q_shape[2]).view(b, kv, gt, -1)
            g_out = grad.transpose(1, 2).to(q2.dtype).reshape(b, kv, gt, d)
            g_v = probs.transpose(-1, -2) @ g_out
            g_probs = g_out @ v2.transpose(-1, -2)
            g_scores = torch.ops.aten._softmax_backward_data(g_probs, probs, -1, probs.dtype).mul_(ctx.scale)
            del probs, g_probs
            g_q = (g_scores @ k2).view(ctx.q_shape)
            g_k = g_scores.transpose(-1, -2) @ q2  # sums over the query groups of each key head
        return g_q.to(ctx.in_dtypes[0]), g_k.to(ctx.in_dtypes[1]), g_v.to(ctx.in_dtypes[2]), None, None


def _grouped(q: torch.Tensor, k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, T, D) queries as (B, KV, G*T, D): the G query heads that share a key head, stacked."""
    b, h, t, d = q.shape
    return q.to(dtype).reshape(b, k.shape[1], (h // k.shape[1]) * t, d)


def _probs(q2: torch.Tensor, k2: torch.Tensor, mask: torch.Tensor | None, scale: float, t: int) -> torch.Tensor:
    """softmax of q k^T * scale + mask, (B, KV, G, T, S), for T queries per head: accumulated in
    fp32 inside the kernel, stored in the compute dtype (eager attention rounds to it as well)."""
    b, kv, gt, _ = q2.shape
    scores = (q2 @ k2.transpose(-1, -2)).mul_(scale).view(b, kv, gt // t, t, k2.shape[2])
    if mask is not None:
        # The mask is built in the model's dtype: an fp32 model's minimum (-3.4e38) is -inf in bf16, and a
        # fully masked row (a left-padded position, as in batched generation) then turns into NaN and
        # reaches every real position through its values. Clamp to the scores' own finite minimum.
        scores = scores + mask.unsqueeze(2).clamp(min=torch.finfo(scores.dtype).min).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def lean_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (registered as "retune_eager"); eager's maths and mask."""
    if dropout and module.training:  # attention dropout: the stock eager path handles it
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    return AttentionFn.apply(query, key, value, mask, scaling), None


ATTENTION = "retune_eager"


def register_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, lean_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)
    return ATTENTION


def _rmsnorm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFn.apply(hidden_states, self.weight, self.variance_epsilon)


def _swiglu_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiluMulFn.apply(self.gate_proj(x), self.up_proj(x)))


def _is_silu(act: Any) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def apply(model: Any) -> dict[str, int]:
    """Swap in the lean functions where the layer is known; returns how many of each were replaced."""
    counts = {"lora_dropout": 0, "rmsnorm": 0, "swiglu": 0, "attention": 0}
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) in ATTENTION_MODELS and getattr(config, "_attn_implementation", None) == "eager":
        register_attention()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.set_attn_implementation(ATTENTION)
        counts["attention"] = 1
    for module in model.modules():
        name = type(module).__name__
        if name in RMSNORM_CLASSES and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            counts["rmsnorm"] += 1
        elif name in SWIGLU_CLASSES and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_swiglu_forward, module)
            counts["swiglu"] += 1
        counts["lora_dropout"] += _fold_lora_dropout(module)
    return counts


def _fold_lora_dropout(module: Any) -> int:
    """peft LoRA linear: move the dropout of each (non-DoRA) adapter into its lora_A."""
    drops, a_mods = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
    if not isinstance(drops, torch.nn.ModuleDict) or not isinstance(a_mods, torch.nn.ModuleDict):
        return 0
    n = 0
    use_dora = getattr(module, "use_dora", {}) or {}
    for key, drop in list(drops.items()):
        a = a_mods[key] if key in a_mods else None
        if not isinstance(drop, torch.nn.Dropout) or drop.p <= 0 or use_dora.get(key) or type(a) is not torch.nn.Linear:
            continue
        a.__class__ = DroppedLinear
        cast(DroppedLinear, a).dropout_p = float(drop.p)  # the class swap is invisible to the type checker
        drops[key] = torch.nn.Identity()
        n += 1
    return n
