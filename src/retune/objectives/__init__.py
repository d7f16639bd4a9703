"""Stage types (sft | dpo | orpo | simpo | kto | grpo): each an object that encodes, takes the loss and scores
validation (base.py), registered by the `type` name a config gives (config/objective.py).

A new stage type is a class with its loss (preference.py shows three), a config class with its keys,
and a line in STAGE_TYPES.
"""

from __future__ import annotations

from typing import Any

from retune.objectives.base import SFT, Objective
from retune.objectives.grpo import GRPO
from retune.objectives.kto import KTO
from retune.objectives.preference import DPO, ORPO, SimPO

STAGE_TYPES: dict[str, type[Objective]] = {"dpo": DPO, "orpo": ORPO, "simpo": SimPO, "kto": KTO, "grpo": GRPO}


def objective_for(cfg: Any) -> Objective:
    """The stage type of `objective:` or of a stage (anything with `type` and that type's keys)."""
    kind = getattr(cfg, "type", "sft")
    return SFT if kind == "sft" else STAGE_TYPES[kind](cfg)  # type: ignore[call-arg]


__all__ = ["SFT", "STAGE_TYPES", "Objective", "objective_for"]
