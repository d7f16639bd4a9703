"""YAML file + `--set a.b=c` overrides -> a validated RetuneConfig; a validation error becomes one line
naming the key and the fix (with a "did you mean" for unknown keys and other tools' names)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from retune.config.data import TASK_SHORTHAND, SourceConfig, TaskConfig, TemplateConfig
from retune.config.schema import RetuneConfig
from retune.errors import UsageError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RetuneConfig:
    """Read YAML (or start from defaults), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UsageError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); save the config as UTF-8") from None
        if raw is None:  # nothing, or only comments: almost always the wrong file or an unsaved editor
            raise UsageError(
                f"config file {path} is empty (no keys); start from examples/quickstart.yaml, or write `{{}}` to run on every default"
            )
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: the top level must be a mapping of sections (model:, adapter:, data:, ...)")
    for item in overrides or []:
        apply_override(raw, item)
    if path is not None:
        output = raw.setdefault("output", {})
        if isinstance(output, dict) and not output.get("name"):  # anything else: validate() names the problem
            output["name"] = Path(path).stem
    return validate(raw)


def validate(raw: dict[str, Any]) -> RetuneConfig:
    try:
        return RetuneConfig.model_validate(raw)
    except ValidationError as e:
        raise UsageError(_explain(e)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected key=value, e.g. --set trainer.epochs=2")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    node: Any = raw
    for p in parts[:-1]:
        if isinstance(node, list):  # a list item by index: data.tasks.0.weight=2
            if not p.isdigit() or int(p) >= len(node):
                raise UsageError(f"--set {key}: {p} is not an index of this list (0..{len(node) - 1})")
            node = node[int(p)]
            continue
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, (dict, list)):
            raise UsageError(f"--set {key}: {p} is not a section")
        node = nxt
    if not isinstance(node, dict):
        raise UsageError(f"--set {key}: {parts[-2] if len(parts) > 1 else key} is a list; set one item's key, e.g. {key}.0.<key>=...")
    # YAML parsing gives `2` -> int, `true` -> bool, `[a, b]` -> list, as in the file itself.
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


# Names other tools use for the same keys (PEFT, HF Trainer, Axolotl, Ludwig): hinted directly.
ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "base_model": "base",
    "lr_scheduler": "scheduler",
    "lr_scheduler_type": "scheduler",
    "sequence_len": "max_length",
    "max_seq_length": "max_length",
    "warmup": "warmup_ratio",
    "output_dir": "dir",
    "max_grad": "max_grad_norm",
}

_BRANCH_NAMES = {
    "SourceConfig",
    "TemplateConfig",
    "TaskConfig",
    "list[TaskConfig]",
    "str",
    "list[str]",
    "literal['all-linear']",
    "int",
    "float",
}


def _explain(e: ValidationError) -> str:
    # A value that fits one branch of a union (data.train: {path: ..., encoding: ...}) also fails the
    # others ("not a valid string"): report the real problem inside the branch it fits.
    errors = e.errors()
    real = [x for x in errors if not (x["type"].endswith("_type") and any(p in _BRANCH_NAMES for p in x["loc"]))]
    err = (real or errors)[0]
    # union branches show up in the location by type name; a user thinks in keys only
    loc = ".".join(str(p) for p in err["loc"] if p not in _BRANCH_NAMES)
    if err["type"] == "extra_forbidden":
        parent, name = _section(err["loc"][:-1]), str(err["loc"][-1])
        fields = list(parent.model_fields) if parent else []
        hint = [ALIASES[name]] if ALIASES.get(name) in fields else difflib.get_close_matches(name, fields, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"valid keys: {', '.join(parent.model_fields) if parent else '?'}"
        msg = f"config: unknown key '{loc}' ({fix})"
    elif err["type"] == "literal_error":
        msg = f"config: {loc}: {err['msg'].lower()}, got {err['input']!r}"
    elif err["type"] == "value_error":
        text = err["msg"].removeprefix("Value error, ")
        # a check inside a list item (a task, a stage) does not know where it sits: say it
        nested = loc and not text.startswith(str(err["loc"][0]))
        msg = f"config: {loc}: {text}" if nested else f"config: {text}"
    else:
        msg = f"config: {loc}: {err['msg'].lower()} (got {err.get('input')!r})"
    more = len(real or errors) - 1
    return msg + (f" [and {more} more problem{'s' * (more > 1)}]" if more else "")


def _section(loc: tuple) -> type[BaseModel] | None:
    """The pydantic class at a location like ('adapter',) or ('data', 'train', 'SourceConfig')."""
    cls: Any = RetuneConfig
    members: list[Any] = []
    for p in loc:
        if isinstance(p, int):
            continue
        field = cls.model_fields.get(p) if hasattr(cls, "model_fields") else None
        if field is None:
            # union branches appear in the location by class name, or by their tag (objective.dpo)
            cand = {c.__name__: c for c in (SourceConfig, TemplateConfig, TaskConfig)}
            cand.update({tag: m for m in members for tag in _tags(m)})
            cls = cand.get(p, cls)
            continue
        members = [a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = members[0] if members else None
        if cls is None:
            return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _tags(cls: type[BaseModel]) -> list[str]:
    """The tag values a union member answers to (its `type` or `method` literal)."""
    fields = cls.model_fields
    return [str(v) for key in ("type", "method") if key in fields for v in getattr(fields[key].annotation, "__args__", ())]


def _flatten(ann: Any) -> list[Any]:
    args = getattr(ann, "__args__", None)
    if not args:
        return [ann]
    out: list[Any] = []
    for a in args:
        out.extend(_flatten(a))
    return out


def to_yaml(cfg: RetuneConfig) -> str:
    """The full config (defaults included, so a run directory records what ran), loadable again."""
    d = cfg.model_dump(mode="json")
    if d["data"].get("tasks") is not None:  # the one-task shorthand's defaults would clash with tasks on reload
        for key in TASK_SHORTHAND:
            d["data"].pop(key, None)
    return yaml.safe_dump(d, sort_keys=False)
