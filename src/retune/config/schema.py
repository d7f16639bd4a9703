"""RetuneConfig: a whole config file, and the checks that span sections."""

from __future__ import annotations

from pydantic import model_validator

from retune.config.retention import RetainConfig, RetentionMethod, StageConfig
from retune.config.sections import AdapterConfig, DataConfig, EvalConfig, ModelConfig, OutputConfig, TrainerConfig, _Strict


class RetuneConfig(_Strict):
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    trainer: TrainerConfig = TrainerConfig()
    output: OutputConfig = OutputConfig()
    retain: RetainConfig = RetainConfig()
    """Tasks and a probe that measure forgetting (summary.json `retention`: base, final, delta)."""
    retention: list[RetentionMethod] = []
    """Mitigations, combinable: [{method: ewc | si | l2sp | distill | replay, weight: ..., ...}]."""
    stages: list[StageConfig] = []
    """Fine-tune on these tasks in order (data.* keys other than tasks apply to all); after each stage
    every task seen so far is scored: the accuracy matrix R, average accuracy, BWT and FWT."""

    @model_validator(mode="after")
    def _check(self) -> RetuneConfig:
        if self.trainer.max_forgetting is not None and not (self.retain.tasks or self.retain.probe):
            raise ValueError("trainer.max_forgetting needs retain: tasks (or a probe) to measure forgetting on")
        if self.trainer.select == "retained" and self.trainer.max_forgetting is None:
            raise ValueError("trainer.select=retained needs trainer.max_forgetting (the threshold)")
        names = [m.method for m in self.retention]
        if len(set(names)) < len(names):
            raise ValueError(f"retention: each method at most once (got {', '.join(names)})")
        if any(m.method == "replay" for m in self.retention) and not (self.retain.tasks or self.stages):
            raise ValueError("retention replay needs data to replay: retain: tasks, or stages:")
        if self.adapter.type in ("prefix_tuning", "prompt_tuning") and self.data.max_length + self.adapter.num_virtual_tokens > 8192:
            raise ValueError("data.max_length + adapter.num_virtual_tokens exceeds 8192 tokens")
        return self
