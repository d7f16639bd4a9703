"""GRPO with verifiable rewards (Shao et al. 2024, as TRL's GRPOTrainer with its defaults: on-policy,
one update per generation). tests/test_rl.py checks the advantages, the loss and its gradients against
TRL's on the same completions and model.

Per optimizer step (`before_step`, on this process's prompts): sample `generations` answers per prompt
through the evaluation's batched, stop-string-aware `generate`, reward each (rewards.py), and turn the
rewards into group-relative advantages; then each micro-batch's loss (`loss`) is, per prompt (one unit),
the mean over its answers of the per-token policy-gradient term -A * pi / pi.detach() (+ beta * the k3
KL estimate to the reference), averaged over the answer's tokens (grpo) or summed / max_new_tokens
(dr_grpo). Validation: greedy answers to the validation prompts, rewarded the same way; the validation
loss is minus their mean reward (so the best checkpoint is the best held-out reward).
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from retune.data.batching import collate
from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError
from retune.evaluate.intervals import interval
from retune.evaluate.scoring import generate
from retune.models.loss import CHUNK, hidden_path
from retune.objectives.base import Objective
from retune.objectives.rewards import format_rewards, group_advantages, metric_rewards
from retune.types import Autocast

if TYPE_CHECKING:
    from retune.config.objective import GRPOObjective
    from retune.data.dataset import TaskData
    from retune.models.tasks import TaskType


@dataclass
class Prompt(Encoded):
    """A grpo example: prompt + reference answer in Encoded's fields (what lengths and retention
    penalties see), and what generating and rewarding need."""

    uid: int = 0
    text: str = ""  # the prompt as the model reads it (chat template applied)
    parts: tuple[str, str | None, list[dict] | None] = ("", None, None)  # prompt, system, messages
    reference: str = ""
    record: dict = field(default_factory=dict)


class Rollout(NamedTuple):
    rows: list[Encoded]  # the prompt + each sampled answer
    advantages: list[float]
    rewards: list[float]
    ref: list[torch.Tensor] | None  # the reference's per-token log-probabilities of each answer (beta > 0)


def token_logps(model: Any, batch: dict[str, torch.Tensor], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled token (N,) of logits / temperature, as TRL scores its
    completions; each token's row (N,)). Only labelled positions go through the head."""
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    rows, targets = torch.nonzero(mask, as_tuple=True)[0], labels[mask]
    path = hidden_path(model)
    if path is not None:
        hidden = path[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, :-1][mask]
        logits = [path[1](hidden[s : s + CHUNK]) for s in range(0, hidden.shape[0], CHUNK)]
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = [out[:, -batch["input_ids"].shape[1] :][:, :-1][mask]]
    full = torch.cat(logits).float() / temperature if logits else torch.zeros(0, 1)
    return -F.cross_entropy(full, targets, reduction="none"), rows


def encode_answer(fmt: Formatter, item: Prompt, answer: str, max_new: int) -> Encoded:
    """The prompt + a sampled answer, tokenised as training encodes a response: the answer and the end
    of turn, unless generation stopped at max_new_tokens (then no end was sampled, none is learnt)."""
    tok = fmt.tok
    plain = tok(answer, add_special_tokens=False).input_ids
    prompt, system, messages = item.parts
    if len(plain) >= max_new:
        r = plain[:max_new]
    else:
        r = tok(fmt.response_text(prompt, answer, system, messages), add_special_tokens=False).input_ids or [tok.eos_token_id]
    p = fmt.prompt_ids(item.text)
    over = len(p) + len(r) - fmt.data.max_length
    if over > 0:
        p = p[: fmt.keep] + p[over + fmt.keep :]
    return Encoded(p + r, [-100] * len(p) + r, len(p))


class GRPO(Objective):
    name = "grpo"
    metric_names: ClassVar[tuple[str, ...]] = ("reward", "reward_std", "kl")
    cfg: GRPOObjective

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.items: list[Prompt] = []  # every prompt encoded, by uid (the batch carries uids)
        self.rollouts: dict[int, Rollout] = {}
        self.fmt: Formatter | None = None
        self.task: Any = None
        self.max_new = 64
        self.gen_batch = 16
        self.reference: Any = None  # full fine-tuning with beta > 0: a frozen copy of the stage's start
        self.val_rewards: list[float] = []
        self.pad_id = 0

    def encode_task(
        self, kind: TaskType, fmt: Formatter, task: TaskData, records: list[dict], where: str, seed: int, max_new_tokens: int = 64
    ) -> list[Encoded]:
        if not kind.has_lm_head:
            raise UsageError(f"stage type grpo trains a causal LM's answers; model.task={kind.name} has no LM head (use sft)")
        self.fmt, self.task = fmt, task
        self.max_new = self.cfg.max_new_tokens or task.max_new_tokens or max_new_tokens
        out: list[Encoded] = []
        for i, r in enumerate(records):
            prompt, reference, system = render(task.template, r)
            messages = r["prompt"] if isinstance(r.get("prompt"), list) else None
            e = fmt.encode(prompt, reference, system, messages, where=f"{where} record {i + 1}")
            parts = (prompt, system, messages)
            item = Prompt(
                e.input_ids, e.labels, e.prompt_len, task.loss_weight, len(self.items), fmt.prompt_text(*parts), parts, reference, r
            )
            self.items.append(item)
            out.append(item)
        return out

    def count(self, e: Encoded) -> int:
        return 1  # a prompt (its group of answers) is one unit

    def length(self, e: Encoded) -> int:
        return (len(e.input_ids) - e.prompt_len + self.max_new) * self.cfg.generations if isinstance(e, Prompt) else len(e.input_ids)

    def rows(self, e: Encoded) -> list[Encoded]:
        """`generations` answers of up to max_new_tokens each after the prompt."""
        p = e.input_ids[: e.prompt_len]
        answer = [0] * self.max_new
        return [Encoded(p + answer, [-100] * len(p) + answer, len(p))] * self.cfg.generations

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate(examples, pad_id)  # prompt + reference: what a retention penalty's batch term sees
        batch["prompt_uid"] = torch.tensor([e.uid for e in examples if isinstance(e, Prompt)], dtype=torch.long)
        batch["weights"] = torch.tensor([e.weight for e in examples], dtype=torch.float32)
        return batch

    def prepare(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> None:
        """The stage starts: the generation batch, and under full fine-tuning with a KL term a frozen copy."""
        self.gen_batch = batch_size
        if self.cfg.beta and not hasattr(model, "disable_adapter") and self.reference is None:  # one objective per stage
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _as_reference(self, model: Any) -> Iterator[Any]:
        """The reference model: LoRA / QLoRA with the adapters switched off (no copy), else the frozen copy."""
        if self.reference is not None:
            yield self.reference
        else:
            with model.disable_adapter():
                yield model

    def rewards(self, answers: list[str], items: list[Prompt]) -> list[float]:
        records = [p.record for p in items] if self.task.metric == "pass_at_1" else None
        scores = metric_rewards(self.task.metric, answers, [p.reference for p in items], records)
        extra = format_rewards(answers, self.cfg.format_pattern, self.cfg.format_weight)
        return [a + b for a, b in zip(scores, extra, strict=True)]

    @torch.no_grad()
    def before_step(self, model: Any, examples: list[Encoded], pad_id: int, autocast: Autocast) -> None:
        """Sample, reward and score this process's prompts for the step (seeded by the prompts: resumable)."""
        items = [e for e in examples if isinstance(e, Prompt)]
        self.rollouts, self.pad_id = {}, pad_id
        if not items:
            return
        assert self.fmt is not None
        G = self.cfg.generations
        group = [p for p in items for _ in range(G)]  # prompt by prompt, as TRL's repeat_interleave
        was_training = model.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(str([p.uid for p in items]).encode()))
            answers = generate(
                model, self.fmt.tok, [p.text for p in group], self.max_new, self.gen_batch, autocast,
                add_special_tokens=not self.fmt.chat, stop=self.task.stop, temperature=self.cfg.temperature,
            )  # fmt: skip
        model.train(was_training)
        rewards = self.rewards(answers, group)
        adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), G, self.cfg.scale_rewards == "group").tolist()
        rows = [encode_answer(self.fmt, p, a, self.max_new) for p, a in zip(group, answers, strict=True)]
        ref = self._reference_logps(model, rows, pad_id, autocast) if self.cfg.beta else None
        for k, p in enumerate(items):
            s = slice(k * G, (k + 1) * G)
            self.rollouts[p.uid] = Rollout(rows[s], adv[s], rewards[s], ref[s] if ref is not None else None)

    def _reference_logps(self, model: Any, rows: list[Encoded], pad_id: int, autocast: Autocast) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        with self._as_reference(model) as ref:
            for s in range(0, len(rows), self.gen_batch):
                with autocast():
                    lp, idx = token_logps(ref, collate(rows[s : s + self.gen_batch], pad_id), self.cfg.temperature)
                out += [lp[idx == i].float() for i in range(len(rows[s : s + self.gen_batch]))]
        return out

    def group_terms(
        self, model: Any, batch: dict[str, torch.Tensor], adv: torch.Tensor, ref: torch.Tensor | None, G: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss per prompt (P,), mean per-token KL per prompt (P,)) of P groups of G answers (P*G rows)."""
        lp, rows = token_logps(model, batch, self.cfg.temperature)
        n = torch.zeros(adv.shape[0]).index_add(0, rows, torch.ones_like(lp))
        per_token = -adv[rows] * torch.exp(lp - lp.detach())  # on-policy: value -A, gradient -A * grad log pi
        kl = torch.zeros_like(lp)
        if ref is not None:
            kl = torch.exp(ref - lp) - (ref - lp) - 1
            # times the importance ratio (value 1): the unbiased reverse-KL gradient, TRL's use_bias_correction_kl
            per_token = per_token + self.cfg.beta * kl * torch.exp(lp - lp.detach())
        per_row = torch.zeros(adv.shape[0]).index_add(0, rows, per_token)
        per_row = per_row / (n.clamp(min=1) if self.cfg.loss_type == "grpo" else self.max_new)
        kl_row = torch.zeros(adv.shape[0]).index_add(0, rows, kl.detach()) / n.clamp(min=1)
        return per_row.view(-1, G).mean(1), kl_row.view(-1, G).mean(1)

    def loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float) -> tuple[torch.Tensor, dict[str, float]]:
        G = self.cfg.generations
        if any(int(u) not in self.rollouts for u in batch["prompt_uid"]):  # a process with no prompts this step
            lp, _ = token_logps(model, batch, self.cfg.temperature)  # joins the gradient all-reduce, weighted 0
            return lp.sum() * 0.0, dict.fromkeys(self.metric_names, 0.0)
        outs = [self.rollouts[int(u)] for u in batch["prompt_uid"]]
        rows = collate([r for o in outs for r in o.rows], self.pad_id)
        adv = torch.tensor([a for o in outs for a in o.advantages], dtype=torch.float32)
        ref = torch.cat([t for o in outs for t in o.ref or []]) if self.cfg.beta else None
        per_prompt, kl = self.group_terms(model, rows, adv, ref, G)
        rewards = torch.tensor([o.rewards for o in outs], dtype=torch.float32)  # (P, G)
        sums = {
            "reward": rewards.mean(1).sum().item() * scale,
            "reward_std": rewards.std(1).sum().item() * scale,
            "kl": kl.sum().item() * scale,
        }
        return (per_prompt * batch["weights"]).sum() * scale, sums

    @torch.no_grad()
    def validation_sums(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, float]:
        """Greedy answers to `examples`, rewarded: {"loss": -sum of rewards, "n", "reward": sum, "kl"}."""
        items = [e for e in examples if isinstance(e, Prompt)]
        if not items:
            return {"loss": 0.0, "n": 0.0, **dict.fromkeys(self.metric_names, 0.0)}
        assert self.fmt is not None
        was_training = model.training
        answers = generate(
            model, self.fmt.tok, [p.text for p in items], self.max_new, batch_size, autocast,
            add_special_tokens=not self.fmt.chat, stop=self.task.stop,
        )  # fmt: skip
        self.val_rewards = self.rewards(answers, items)
        kl = 0.0
        if self.cfg.beta:  # the KL of the greedy answers, per token, to the reference
            rows = [encode_answer(self.fmt, p, a, self.max_new) for p, a in zip(items, answers, strict=True)]
            ref = torch.cat(self._reference_logps(model, rows, pad_id, autocast))
            with autocast():
                lp, idx = token_logps(model, collate(rows, pad_id), self.cfg.temperature)
            k3 = torch.exp(ref - lp.float()) - (ref - lp.float()) - 1
            n = torch.zeros(len(rows)).index_add(0, idx, torch.ones_like(k3))
            kl = (torch.zeros(len(rows)).index_add(0, idx, k3) / n.clamp(min=1)).sum().item()
        model.train(was_training)
        total = sum(self.val_rewards)
        return {"loss": -total, "n": float(len(items)), "reward": total, "reward_std": 0.0, "kl": kl}

    def summary(self, model: Any, val: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, Any]:
        """The validation prompts answered greedily by the final model: mean reward with its 95% interval."""
        if not val:
            return {}
        sums = self.validation_sums(model, val, pad_id, batch_size, autocast)
        iv = interval("reward", self.val_rewards)
        return {
            "stage_type": self.name,
            "prompts": int(sums["n"]),
            "reward": iv["mean"],
            "reward_interval": [iv["low"], iv["high"]],
            "kl": sums["kl"] / max(sums["n"], 1.0),
        }
