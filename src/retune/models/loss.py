"""The token loss: token_nll / training_loss dispatch on the model's task type (models/tasks.py); the
causal-LM negative log-likelihood, on labelled positions only, is here.

Two things make it frugal on a CPU:
- only positions that carry a label go through the vocabulary projection (with loss on responses
  only, that skips most of the lm_head's work);
- in training, a fused linear + cross-entropy computes the projection chunk by chunk and takes
  the gradient inside the forward pass, so fp32 logits never exist for more than one chunk of rows
  (batch x vocabulary logits are ~200 MB for 1k tokens of a 49k vocabulary, and their softmax
  backward costs as much time as the forward).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from retune.data.batching import model_inputs
from retune.models.tasks import task_type_of

CHUNK = 256  # rows of logits alive at once: at 1024 the chunk's logits and gradients added ~230 MB to the peak (SmolLM2, batch 8 x 256)
COMPILE_MIN_VOCAB = 8192  # below this the softmax is cheap and compiling costs more than it saves
_compiled: dict[str, Any] = {}


def _ce_chunk(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE of one chunk of logits (any float dtype, math in fp32) and its weighted
    gradient d(sum w*CE)/d logits = w * (softmax - onehot), in the logits' dtype."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=1)
    loss = lse - x.gather(1, y[:, None]).squeeze(1)
    grad = torch.exp(x - lse[:, None])
    grad = grad - torch.nn.functional.one_hot(y, x.shape[1]).to(grad.dtype)
    return loss, (grad * w[:, None]).to(logits.dtype)


def ce_kernel(vocab: int, use_compile: bool = True) -> Any:
    """torch.compile fuses the cast, log-sum-exp and gradient into two passes over the logits:
    measured 6x faster than eager on this CPU for 1k x 49k logits. Falls back to eager."""
    if not use_compile or vocab < COMPILE_MIN_VOCAB:
        return _ce_chunk
    if "ce" not in _compiled:
        try:
            _compiled["ce"] = torch.compile(_ce_chunk, dynamic=True)
        except Exception:  # no compiler toolchain: eager is correct, only slower
            _compiled["ce"] = _ce_chunk
    return _compiled["ce"]


USE_COMPILE = True  # set from trainer.compile by the recipe


def unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_prompt_learning(model: Any) -> bool:
    """A peft method that prepends virtual tokens (prefix / prompt / p-tuning)."""
    return bool(getattr(model, "peft_config", None)) and any(getattr(c, "is_prompt_learning", False) for c in model.peft_config.values())


def _fully_sharded(model: Any) -> bool:
    """Under FSDP (torch's fully_shard) a module's weights are whole only inside the forward of its
    sharded unit: the backbone and head can't be called apart from the root's forward."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or isinstance(unwrap(model), FSDPModule)


def hidden_path(model: Any) -> tuple[Any, Any] | None:
    """(backbone, lm_head) when the head can be applied to selected positions; None for methods
    (prefix / prompt tuning) whose peft forward must run as a whole, for FSDP-sharded models (their
    root forward gathers the weights), and for models whose forward does more to the logits than the
    head (Gemma 2's final_logit_softcapping: tanh(logits / c) * c; skipping it changes the NLL;
    tests/test_families.py::test_scores_are_the_models_own_loss[gemma2] fails without this)."""
    if is_prompt_learning(model) or _fully_sharded(model):
        return None
    base = unwrap(model)
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(getattr(config, "text_config", None), "final_logit_softcapping", None):
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is base:
        return None
    return backbone, head


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on `t` run in: autocast's when it is on, else the tensor's own."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T, y_i), with the gradient computed chunk-wise during the forward.

    Returns (weighted loss scalar, per-token losses detached). The per-token weights fold the
    normalisation (1 / tokens in the optimizer step) into the loss so the saved gradients are final.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights):  # hidden (N, C), weight (V, C)
        dtype = autocast_dtype(hidden)
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        w = weight.detach().to(dtype)
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden, dtype=dtype) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        kernel = ce_kernel(weight.shape[0], USE_COMPILE)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], CHUNK):
                h = hidden[s : s + CHUNK].detach().to(dtype)
                logits = h @ w.T  # (n, V): the only logits alive
                losses[s : s + CHUNK], g = kernel(logits, targets[s : s + CHUNK], token_weights[s : s + CHUNK])
                if need_h or need_w:
                    if need_h:
                        grad_h[s : s + CHUNK] = g @ w
                    if need_w:
                        grad_w.add_((g.T @ h).float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(losses)
        return (losses * token_weights).sum(), losses

    @staticmethod
    def backward(ctx, grad_loss, _grad_losses):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_loss).to(ctx.hidden_dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def _positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = batch["labels"][:, 1:]  # (B, T-1): token t is predicted from position t-1
    mask = labels != -100
    return mask, torch.nonzero(mask, as_tuple=True)[0], labels[mask]


def _per_row(values: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.zeros(batch_size, dtype=torch.float32, device=values.device).index_add(0, rows, values.float())


def token_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL of the labelled tokens, and per-row token counts (no gradient needed), by the
    model's task type (seq_cls / seq2seq have their own batch layout: models/tasks.py)."""
    return task_type_of(model).token_nll(model, batch)


def training_loss(model: Any, batch: dict[str, torch.Tensor], scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to back-propagate, per-row summed NLL detached), by the model's task type. The loss is
    sum(token NLL) * scale; `scale` is 1 / (labelled tokens in the optimizer step), optionally times
    task weights per row (B,) or, in a packed batch, per token (B, T)."""
    return task_type_of(model).training_loss(model, batch, scale)


def _token_losses(model: Any, batch: dict[str, torch.Tensor], mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL of each labelled token (N,), through the model's head at the selected positions only."""
    inputs = model_inputs(batch)
    path = hidden_path(model)
    if path is None:
        logits = model(**inputs).logits
        logits = logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning prepends virtual tokens
        return F.cross_entropy(logits[:, :-1][mask].float(), targets, reduction="none")
    backbone, head = path
    selected = backbone(**inputs).last_hidden_state[:, :-1][mask]  # (N, C)
    parts = [
        F.cross_entropy(head(selected[s : s + CHUNK]).float(), targets[s : s + CHUNK], reduction="none")
        for s in range(0, selected.shape[0], CHUNK)
    ]
    return torch.cat(parts) if parts else selected.new_zeros(0, dtype=torch.float32)


def causal_token_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """token_nll of a causal LM: only labelled positions go through the head."""
    mask, rows, targets = _positions(batch)
    return _per_row(_token_losses(model, batch, mask, targets), rows, mask.shape[0]), mask.sum(dim=1)


def _token_weights(scale: float | torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """scale at each labelled token: a scalar, per row (B,), or per token (B, T) as packed batches carry it."""
    w = torch.as_tensor(scale, dtype=torch.float32)
    if w.ndim == 2:
        return w[:, 1:][mask]
    return w[rows] if w.ndim else w.expand(rows.shape[0])


def causal_training_loss(model: Any, batch: dict[str, torch.Tensor], scale: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """training_loss of a causal LM: the fused linear + cross-entropy where the head is a plain Linear."""
    mask, rows, targets = _positions(batch)
    weights = _token_weights(scale, mask, rows).contiguous()
    path = hidden_path(model)
    head = path[1] if path else None
    if path is None or not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear or head.bias is not None:
        tok_loss = _token_losses(model, batch, mask, targets)  # generic path: adapters on the head, prompt learning, ...
        return (tok_loss * weights).sum(), _per_row(tok_loss.detach(), rows, mask.shape[0])
    hidden = path[0](**model_inputs(batch)).last_hidden_state
    loss, tok_losses = LinearCrossEntropy.apply(hidden[:, :-1][mask], head.weight, targets, weights)
    return loss, _per_row(tok_losses, rows, mask.shape[0])
