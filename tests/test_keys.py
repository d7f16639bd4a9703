"""The config key reference: every key documented, docs/config.md generated from the schema."""

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from retune.config import RetuneConfig, describe_keys, format_keys, keys_markdown
from retune.errors import UsageError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _models(ann: typing.Any) -> typing.Iterator[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        yield ann
    for arg in typing.get_args(ann):
        yield from _models(arg)


def _reachable(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen = [root]
    for cls in seen:
        for field in cls.model_fields.values():
            seen += [m for m in _models(field.annotation) if m not in seen]
    return seen


def test_every_key_has_a_docstring():
    classes = _reachable(RetuneConfig)
    assert {"DataConfig", "TaskConfig", "SourceConfig", "EWCConfig", "ReplayConfig", "StageConfig"} <= {c.__name__ for c in classes}
    missing = [f"{c.__name__}.{name}" for c in classes for name, f in c.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"fields without a docstring (write one under each): {missing}"


def test_docs_config_md_is_generated_from_the_schema():
    fix = "regenerate it: python -c 'from retune.config import keys_markdown; print(keys_markdown(), end=\"\")' > docs/config.md"
    assert DOCS.exists() and DOCS.read_text() == keys_markdown(), f"docs/config.md is out of date; {fix}"


def test_keys_walk_lists_unions_and_methods():
    keys = {(k.key, k.section): k for k in describe_keys()}
    assert keys[("data.train", "data")].default == "rotten-tomatoes"  # as the validator fills it in
    assert keys[("data.tasks[].train", "data")].default == "null"
    assert keys[("data.train.encoding", "data")].default == "utf-8"
    assert keys[("trainer.batch_size", "trainer")].type == "integer >= 1"
    assert keys[("adapter.dropout", "adapter")].type == "number >= 0 and < 1"
    assert keys[("stages[].task", "stages: sft")].type == "task (see data.tasks[])"
    types = {s for k, s in keys if k == "stages[].type"}  # one table per stage type, as retention methods
    assert types == {"stages: sft", "stages: dpo", "stages: orpo", "stages: simpo", "stages: kto", "stages: grpo"}
    assert keys[("stages[].beta", "stages: dpo")].default == "0.1"
    methods = {s for k, s in keys if k == "retention[].weight"}
    assert methods == {"retention: ewc", "retention: si", "retention: l2sp", "retention: distill"}
    assert "--nproc" in keys[("trainer.batch_size", "trainer")].doc


def test_prefixes():
    assert [k.key for k in describe_keys("data.tasks.0.train")] == ["data.tasks[].train"]
    assert [k.key for k in describe_keys("data.tasks[1].template")][:2] == ["data.tasks[].template"]
    assert {k.key for k in describe_keys("batch_size")} == {"eval.batch_size", "trainer.batch_size", "retention[].batch_size"}
    assert {k.key for k in describe_keys("learning_rate")} == {"trainer.lr", "stages[].lr"}  # other tools' names
    assert all(k.key.startswith("trainer") for k in describe_keys("trainer"))
    with pytest.raises(UsageError) as e:
        describe_keys("trainer.bach_size")
    assert str(e.value) == ("no config key 'trainer.bach_size' (did you mean 'trainer.batch_size'?); `retune keys` lists every key")


def test_format_keys_one_block_per_key():
    text = format_keys("trainer.grad_accum")
    assert text.startswith("trainer.grad_accum\n  type: integer >= 1   default: 1\n  Gradient accumulation")
    assert format_keys("retention[].gamma").startswith("retention[].gamma   [retention: ewc]\n")
    assert format_keys().count("\n\n") == len(describe_keys()) - 1


def test_the_cli_prints_the_keys():
    from typer.testing import CliRunner

    from retune.cli import app

    result = CliRunner().invoke(app, ["keys", "trainer.batch_size"])
    assert result.exit_code == 0 and "trainer.batch_size" in result.stdout and "grad_accum" in result.stdout
    result = CliRunner().invoke(app, ["keys", "trainer.bach_size"])
    assert result.exit_code == 2 and "did you mean 'trainer.batch_size'" in result.stderr
