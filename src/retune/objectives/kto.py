"""KTO (Ethayarajh et al. 2024): unpaired answers, each desirable or not, in TRL's `prompt` /
`completion` / `label` format. tests/test_rl.py checks the loss and its gradients against TRL's
KTOTrainer on the same batch and model.

Each example also carries a mismatched sequence (its prompt with the previous record's completion, as
TRL builds them); the KL reference point z0 = max(0, mean(log pi - log pi_ref) over those) is taken
over the whole optimizer step's examples (all micro-batches and processes) in `before_step`, so 1x8 ==
8x1 and N processes make the update of one. TRL takes it over each device's micro-batch; on one batch
the two are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from retune.config import TemplateConfig
from retune.data.batching import collate
from retune.data.templates import Encoded, Formatter, render
from retune.errors import UsageError
from retune.objectives.base import Objective
from retune.objectives.pairs import _answer, sequence_logps
from retune.train import distributed as dist
from retune.types import Autocast

if TYPE_CHECKING:
    from retune.config.objective import KTOObjective
    from retune.data.dataset import TaskData
    from retune.models.tasks import TaskType

KTO_TEMPLATE = TemplateConfig(prompt="{prompt}", response="{completion}")
_TRUE = {True, "1", "true", "True", "yes", "desirable", "good"}
_FALSE = {False, "0", "false", "False", "no", "undesirable", "bad"}


@dataclass
class Unpaired(Encoded):
    """A KTO example: the completion in Encoded's fields, its label, the mismatched (KL) sequence, and
    the reference model's log-probabilities of both."""

    desirable: bool = True
    kl: Encoded | None = None
    ref: tuple[float, float] = (0.0, 0.0)


def _label(record: dict, where: str) -> bool:
    value = record.get("label")
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    have = ", ".join(sorted(record)) or "none"
    what = "no 'label'" if value is None else f"label {value!r} is not true/false"
    raise UsageError(
        f"{where}: {what} (columns: {have}); KTO data needs prompt, completion and a boolean label (TRL's format: "
        "true = desirable answer): fill it, drop the row, or map your column with columns: {label: <column>}"
    )


def encode_unpaired(fmt: Formatter, template: TemplateConfig, records: list[dict], where: str) -> list[Unpaired]:
    """Each record's (prompt, completion) and, for the KL term, its prompt with the previous record's
    completion (cyclically; TRL's pairing within a batch)."""
    texts: list[tuple[str, str | None, list[dict] | None, str, bool]] = []
    for i, r in enumerate(records):
        desirable = _label(r, f"{where} record {i + 1}")
        if isinstance(r.get("prompt"), list):  # conversational
            texts.append(("", None, r["prompt"], _answer(r.get("completion")), desirable))
        else:
            prompt, completion, system = render(template, r)
            texts.append((prompt, system, None, completion, desirable))
    out = []
    for i, (prompt, system, messages, completion, desirable) in enumerate(texts):
        e = fmt.encode(prompt, completion, system, messages, where=f"{where} record {i + 1}")
        kl = fmt.encode(prompt, texts[i - 1][3], system, messages, where=f"{where} record {i + 1} (KL pair)")
        out.append(Unpaired(e.input_ids, e.labels, e.prompt_len, desirable=desirable, kl=kl))
    return out


class KTO(Objective):
    """-lambda_D * sigmoid(beta * (log-ratio - z0)) for a desirable answer, -lambda_U * sigmoid(beta *
    (z0 - log-ratio)) for an undesirable one (eq. 7, as 1 - sigmoid); one example is one unit."""

    name = "kto"
    metric_names: ClassVar[tuple[str, ...]] = ("kl", "reward_margin", "desirable")
    cfg: KTOObjective

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.z0 = torch.zeros(())

    def encode_task(
        self, kind: TaskType, fmt: Formatter, task: TaskData, records: list[dict], where: str, seed: int, max_new_tokens: int = 64
    ) -> list[Encoded]:
        if not kind.has_lm_head:
            raise UsageError(f"stage type kto trains a causal LM's answers; model.task={kind.name} has no LM head (use sft)")
        out: list[Encoded] = list(encode_unpaired(fmt, task.template, records, where))
        for e in out:
            e.weight = task.loss_weight
        return out

    def count(self, e: Encoded) -> int:
        return 1

    def length(self, e: Encoded) -> int:
        assert isinstance(e, Unpaired) and e.kl is not None
        return len(e.input_ids) + len(e.kl.input_ids)

    def collate(self, examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        items = [e for e in examples if isinstance(e, Unpaired)]
        batch = collate(list(items), pad_id)
        batch["ref_logps"] = torch.tensor([e.ref[0] for e in items], dtype=torch.float32)
        batch["desirable"] = torch.tensor([e.desirable for e in items], dtype=torch.bool)
        batch["weights"] = torch.tensor([e.weight for e in items], dtype=torch.float32)
        return batch

    def _kl_batch(self, items: list[Unpaired], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate([e.kl for e in items if e.kl is not None], pad_id)
        batch["ref_logps"] = torch.tensor([e.ref[1] for e in items], dtype=torch.float32)
        return batch

    @torch.no_grad()
    def prepare(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> None:
        """The reference log-probabilities of each completion and of its KL sequence: the model as the stage starts."""
        items = [e for e in examples if isinstance(e, Unpaired)]
        was_training = model.training
        model.eval()
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            with autocast():
                done, _ = sequence_logps(model, collate(list[Encoded](chunk), pad_id))
                kl, _ = sequence_logps(model, collate([e.kl for e in chunk if e.kl is not None], pad_id))
            for e, a, b in zip(chunk, done.float().tolist(), kl.float().tolist(), strict=True):
                e.ref = (a, b)
        model.train(was_training)

    @torch.no_grad()
    def reference_point(self, model: Any, items: list[Unpaired], pad_id: int, autocast: Autocast, batch_size: int = 8) -> torch.Tensor:
        """(sum of log pi - log pi_ref over the KL sequences, their count) of this process's examples."""
        total = torch.zeros(2, dtype=torch.float64)
        for s in range(0, len(items), batch_size):
            batch = self._kl_batch(items[s : s + batch_size], pad_id)
            with autocast():
                logps, _ = sequence_logps(model, batch)
            total += torch.tensor([(logps.float() - batch["ref_logps"]).sum().item(), float(logps.shape[0])], dtype=torch.float64)
        return total

    def before_step(self, model: Any, examples: list[Encoded], pad_id: int, autocast: Autocast) -> None:
        """z0 of the optimizer step: over every example of the global batch (all processes), detached."""
        if self.cfg.loss_type != "kto":
            return
        total = dist.all_reduce_(self.reference_point(model, [e for e in examples if isinstance(e, Unpaired)], pad_id, autocast))
        self.z0 = (total[0] / total[1].clamp(min=1)).clamp(min=0).float()

    def terms(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-example loss, implied reward beta * log-ratio) of a batch (B,) each."""
        logps, _ = sequence_logps(model, batch)
        ratio = logps - batch["ref_logps"]
        beta, good = self.cfg.beta, batch["desirable"]
        if self.cfg.loss_type == "kto":
            z0 = self.z0.to(ratio.dtype)
            loss = torch.where(good, 1 - F.sigmoid(beta * (ratio - z0)), 1 - F.sigmoid(beta * (z0 - ratio)))
        else:  # apo_zero_unpaired
            loss = torch.where(good, 1 - F.sigmoid(beta * ratio), F.sigmoid(beta * ratio))
        loss = loss * torch.where(good, self.cfg.desirable_weight, self.cfg.undesirable_weight)
        return loss, beta * ratio.detach()

    def _sums(self, reward: torch.Tensor, good: torch.Tensor, scale: float) -> dict[str, float]:
        signed = torch.where(good, reward, -reward).float()  # how far each answer's reward leans its label's way
        return {
            "kl": float(self.z0) * good.numel() * scale,
            "reward_margin": signed.sum().item() * scale,
            "desirable": good.sum().item() * scale,
        }

    def loss(self, model: Any, batch: dict[str, torch.Tensor], scale: float) -> tuple[torch.Tensor, dict[str, float]]:
        per, reward = self.terms(model, batch)
        return (per * batch["weights"]).sum() * scale, self._sums(reward, batch["desirable"], scale)

    @torch.no_grad()
    def validation_sums(self, model: Any, examples: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, float]:
        """Sums over `examples`, with z0 taken over the same examples."""
        model.eval()
        items = [e for e in examples if isinstance(e, Unpaired)]
        if self.cfg.loss_type == "kto":
            total = self.reference_point(model, items, pad_id, autocast, batch_size)
            self.z0 = (total[0] / total[1].clamp(min=1)).clamp(min=0).float()
        sums = {"loss": 0.0, "n": 0.0, **dict.fromkeys(self.metric_names, 0.0)}
        self.rewards: list[tuple[bool, float]] = []
        for s in range(0, len(items), batch_size):
            batch = self.collate(list[Encoded](items[s : s + batch_size]), pad_id)
            with autocast():
                per, reward = self.terms(model, batch)
            sums["loss"] += per.float().sum().item()
            sums["n"] += per.shape[0]
            for k, v in self._sums(reward, batch["desirable"], 1.0).items():
                sums[k] += v
            self.rewards += list(zip(batch["desirable"].tolist(), reward.float().tolist(), strict=True))
        return sums

    def summary(self, model: Any, val: list[Encoded], pad_id: int, batch_size: int, autocast: Autocast) -> dict[str, Any]:
        """The validation examples scored by the model: loss, z0, and the mean implied reward of the
        desirable and of the undesirable answers (a good model: the first above the second)."""
        if not val:
            return {}
        sums = self.validation_sums(model, val, pad_id, batch_size, autocast)
        good = [r for d, r in self.rewards if d]
        bad = [r for d, r in self.rewards if not d]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "stage_type": self.name,
            "examples": int(sums["n"]),
            "desirable": len(good),
            "loss": sums["loss"] / max(sums["n"], 1.0),
            "kl": float(self.z0),
            "reward_desirable": mean(good),
            "reward_undesirable": mean(bad),
        }
