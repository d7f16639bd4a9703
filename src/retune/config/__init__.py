"""The typed run configuration: the one source of defaults, validation and key documentation.

A YAML file is loaded, `--set a.b=c` overrides are applied, and the result is checked here before
any model or data is touched. Unknown keys are errors with a "did you mean" hint.

- sections.py: model, adapter, eval, trainer, output
- data.py: data (sources, templates, tasks; the per-task keys declared once in TaskDataConfig)
- retention.py: retain (what to keep knowing), retention methods, stages
- tune.py: tune (a search over keys: `retune tune`)
- schema.py: RetuneConfig (a whole file) and its cross-section checks
- loading.py: YAML + overrides -> RetuneConfig, one-line error messages
- keys.py: the key reference generated from the schema (`retune keys`, docs/config.md)
"""

from retune.config.data import DataConfig, SourceConfig, TaskConfig, TaskDataConfig, TemplateConfig
from retune.config.keys import KeyDoc, describe_keys, format_keys, keys_markdown
from retune.config.loading import ALIASES, apply_override, load_config, to_yaml, validate
from retune.config.retention import (
    DistillConfig,
    EWCConfig,
    L2SPConfig,
    LmEvalConfig,
    ReplayConfig,
    RetainConfig,
    RetentionMethod,
    SIConfig,
    StageConfig,
)
from retune.config.schema import RetuneConfig
from retune.config.sections import AdapterConfig, EvalConfig, ModelConfig, OutputConfig, TrainerConfig
from retune.config.tune import ParamSpace, TuneConfig, key_parts

__all__ = [
    "ALIASES",
    "AdapterConfig",
    "DataConfig",
    "DistillConfig",
    "EWCConfig",
    "EvalConfig",
    "KeyDoc",
    "L2SPConfig",
    "LmEvalConfig",
    "ModelConfig",
    "OutputConfig",
    "ParamSpace",
    "ReplayConfig",
    "RetainConfig",
    "RetentionMethod",
    "RetuneConfig",
    "SIConfig",
    "SourceConfig",
    "StageConfig",
    "TaskConfig",
    "TaskDataConfig",
    "TemplateConfig",
    "TrainerConfig",
    "TuneConfig",
    "apply_override",
    "describe_keys",
    "format_keys",
    "key_parts",
    "keys_markdown",
    "load_config",
    "to_yaml",
    "validate",
]
