"""Preference stage types: dpo, orpo, simpo. Each is the paired data path of pairs.py plus one loss on
the sequence log-probabilities; tests/test_preference.py checks each loss and its gradients against
TRL's on the same batch and model.

Shapes: c, r = log pi(chosen | x), log pi(rejected | x) summed over answer tokens (B,); nc, nr their
token counts (B,); ref_c, ref_r the reference's (B,).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError
from retune.evaluate.intervals import wilson
from retune.evaluate.report import console
from retune.objectives.base import Objective
from retune.objectives.pairs import (
    Pair,
    PairText,
    Pending,
    encode_pair,
    from_data,
    from_other,
    pair_batch,
    pending,
    reference_logps,
    sample_pairs,
    sequence_logps,
)
from retune.types import Autocast

if TYPE_CHECKING:
    from retune.config.objective import DPOObjective, ORPOObjective, SimPOObjective
    from retune.data.dataset import TaskData
    from retune.models.tasks import TaskType

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per-pair loss, chosen reward, rejected reward (B,)


class LogProbs(NamedTuple):
    """A pair batch's sequence log-probabilities (B,) each."""

    c: torch.Tensor
    r: torch.Tensor
    nc: torch.Tensor
    nr: torch.Tensor
    ref_c: torch.Tensor
    ref_r: torch.Tensor


class PairObjective(Objective):
    """A loss on (prompt, chosen, rejected) pairs; one pair is one unit of the step's normaliser."""

    metric_names: ClassVar[tuple[str, ...]] = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")
    uses_reference: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.counts: list[dict[str, int]] = []  # pairs: self, per example set made (train, validation)

    def encode_task(
        self, kind: TaskType, fmt: Formatter, task: TaskData, records: list[dict], where: str, seed: int, max_new_tokens: int = 64
    ) -> list[Encoded]:
        if not kind.has_lm_head:
            raise UsageError(f"stage type {self.name} trains a causal LM's answers; model.task={kind.name} has no LM head (use sft)")
        if not records:
            return []
        if self.cfg.pairs == "self":  # sampled from the model in prepare(): keep the prompt and reference
            limit = task.max_new_tokens or max_new_tokens
            texts = [PairText(p, s, None, ref, "") for p, ref, s in (render(task.template, r) for r in records)]
            out: list[Encoded] = [pending(fmt, t, task, limit, f"{where} record {i + 1}") for i, t in enumerate(texts)]
        else:
            texts = (
                from_data(task.template, records, where) if self.cfg.pairs == "data" else from_other(task.template, records, seed, where)
            )
            out = [encode_pair(fmt, t, f"{where} pair {i + 1}") for i, t in enumerate(texts)]
        for e in out:
            e.weight = task.loss_weight
        return out

    def count(self, e: Encoded) -> int:
        return 1

    def length(self, e: Encoded) -> int:
        assert isinstance(e, Pair) and e.rejected is not None
        return len(e.input_ids) + len(e.rejected.input_ids)

    def rows(self, e: Encoded) -> list[Encoded]:
        return [e, e.rejected] if isinstance(e, Pair) and e.rejected is not None else [e]

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return pair_batch([e for e in examples if isinstance(e, Pair)], pad_id)

    def prepare(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> None:
        todo = [e for e in examples if isinstance(e, Pending)]
        if todo and todo[0].fmt is not None:  # pairs: self, made by the model as the stage starts; replaced in place
            made, counts = sample_pairs(model, todo[0].fmt, todo, self.cfg.samples, self.cfg.sample_temperature, 1.0, batch_size, autocast)
            console.print(
                f"pairs from the model: {counts['pairs']} of {counts['prompts']} prompts ({counts['dropped']} dropped: tied or too long)"
            )
            if not made:
                raise UsageError(f"pairs: self: every prompt's {self.cfg.samples} samples tied; raise samples or sample_temperature")
            examples[:] = made
            self.counts.append(counts)
        if self.uses_reference:
            reference_logps(model, [e for e in examples if isinstance(e, Pair)], pad_id, batch_size, autocast)

    def terms(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[Terms, torch.Tensor]:
        """(per-pair loss and rewards, per-row weights) of a pair batch."""
        logps, n = sequence_logps(model, batch)
        c, r = logps.chunk(2)
        nc, nr = n.chunk(2)
        ref_c, ref_r = batch["ref_logps"].chunk(2)
        return self.pair_loss(LogProbs(c, r, nc, nr, ref_c, ref_r)), batch["weights"]

    def pair_loss(self, lp: LogProbs) -> Terms:
        raise NotImplementedError

    def loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float) -> tuple[torch.Tensor, dict[str, float]]:
        (per_pair, chosen, rejected), w = self.terms(model, batch)
        return (per_pair * w).sum() * scale, _metric_sums(chosen, rejected, scale)

    @torch.no_grad()
    def validation_sums(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, float]:
        model.eval()
        sums = {"loss": 0.0, "n": 0.0, **dict.fromkeys(self.metric_names, 0.0)}
        for s in range(0, len(examples), batch_size):
            with autocast():
                (per_pair, chosen, rejected), _ = self.terms(model, self.collate(examples[s : s + batch_size], pad_id))
            sums["loss"] += per_pair.float().sum().item()
            sums["n"] += per_pair.shape[0]
            for k, v in _metric_sums(chosen, rejected, 1.0).items():
                sums[k] += v
        return sums

    def summary(self, model: Any, val: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, Any]:
        """The validation pairs scored by the model: loss, reward accuracy (the share of pairs whose chosen
        answer's reward beats the rejected one's, with its 95% Wilson interval), margin and rewards."""
        if not val:
            return {}
        sums = self.validation_sums(model, val, pad_id, batch_size, autocast)
        n = max(sums["n"], 1.0)
        low, high = wilson(round(sums["reward_accuracy"]), int(sums["n"]))
        means = {m: sums[m] / n for m in self.metric_names}
        return {
            "stage_type": self.name,
            "pairs": int(sums["n"]),
            "loss": sums["loss"] / n,
            **means,
            "reward_accuracy_interval": [low, high],
        } | ({"self_made_pairs": self.counts} if self.counts else {})


def _metric_sums(chosen: torch.Tensor, rejected: torch.Tensor, scale: float) -> dict[str, float]:
    """Reward accuracy (chosen > rejected), margin and the two rewards, summed over pairs x scale."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {
        "reward_accuracy": (chosen > rejected).float().sum().item() * scale,
        "reward_margin": (chosen - rejected).sum().item() * scale,
        "reward_chosen": chosen.sum().item() * scale,
        "reward_rejected": rejected.sum().item() * scale,
    }


class DPO(PairObjective):
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * (log-ratio chosen - log-ratio rejected)),
    with TRL's robust, ipo and hinge variants."""

    name = "dpo"
    uses_reference = True
    cfg: DPOObjective

    def pair_loss(self, lp: LogProbs) -> Terms:
        c, r, nc, nr, ref_c, ref_r = lp
        beta, ls, kind = self.cfg.beta, self.cfg.label_smoothing, self.cfg.loss_type
        chosen_lr, rejected_lr = c - ref_c, r - ref_r
        delta = chosen_lr - rejected_lr
        if kind == "sigmoid":
            loss = -F.logsigmoid(beta * delta)
        elif kind == "robust":  # rDPO, Chowdhury et al. 2024, eq. 8: unbiased under a flip rate ls
            loss = (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
        elif kind == "ipo":  # IPO, Azar et al. 2023, eq. 17, on per-token averaged log-ratios (as TRL)
            loss = (chosen_lr / nc.clamp(min=1) - rejected_lr / nr.clamp(min=1) - 1 / (2 * beta)) ** 2
        else:  # hinge (SLiC, Zhao et al. 2023)
            loss = torch.relu(1 - beta * delta)
        return loss, beta * chosen_lr, beta * rejected_lr


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPO(PairObjective):
    """ORPO (Hong et al. 2024, eq. 6): NLL(chosen) - lambda * log sigmoid(log odds-ratio), on
    per-token averaged log-probabilities."""

    name = "orpo"
    cfg: ORPOObjective

    def pair_loss(self, lp: LogProbs) -> Terms:
        c, r, nc, nr = lp.c, lp.r, lp.nc, lp.nr  # reference-free
        c_avg, r_avg = c / nc.clamp(min=1), r / nr.clamp(min=1)
        log_odds = (c_avg - r_avg) - (log1mexp(c_avg) - log1mexp(r_avg))  # eq. 4 and 7 in log space
        beta = self.cfg.beta
        return -c_avg - beta * F.logsigmoid(log_odds), beta * c_avg, beta * r_avg


class SimPO(PairObjective):
    """SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta * (avg log pi(chosen) - avg log pi(rejected)) - gamma)."""

    name = "simpo"
    cfg: SimPOObjective

    def pair_loss(self, lp: LogProbs) -> Terms:
        c, r, nc, nr = lp.c, lp.r, lp.nc, lp.nr  # reference-free
        beta = self.cfg.beta
        c_avg, r_avg = c / nc.clamp(min=1), r / nr.clamp(min=1)
        return -F.logsigmoid(beta * (c_avg - r_avg) - self.cfg.gamma), beta * c_avg, beta * r_avg
