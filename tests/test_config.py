from pathlib import Path

import pytest

from retune.config import RetuneConfig, load_config, to_yaml, validate
from retune.errors import UsageError

EXAMPLES = sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_saved_config_loads_again(path, tmp_path):
    """A run directory's config.yaml (defaults written out) is what eval / predict / --resume load."""
    cfg = load_config(path)
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved).model_dump() == cfg.model_dump()


def test_defaults_are_valid():
    cfg = RetuneConfig()
    assert cfg.adapter.type == "lora" and cfg.model.base == "smollm2-135m-instruct"


def test_unknown_key_gets_did_you_mean():
    with pytest.raises(UsageError, match=r"unknown key 'adapter.rank'.*did you mean 'r'"):
        validate({"adapter": {"rank": 4}})
    with pytest.raises(UsageError, match=r"unknown key 'trainer.learning_rate'"):
        validate({"trainer": {"learning_rate": 1e-4}})
    with pytest.raises(UsageError, match=r"unknown key 'traner'.*did you mean 'trainer'"):
        validate({"traner": {}})


def test_wrong_type_names_the_key():
    with pytest.raises(UsageError, match=r"trainer.batch_size"):
        validate({"trainer": {"batch_size": "eight"}})


def test_impossible_combinations():
    with pytest.raises(UsageError, match="cannot train a quantised base"):
        validate({"adapter": {"type": "full", "quantization": "nf4"}})
    with pytest.raises(UsageError, match="early_stopping_patience needs trainer.eval_every"):
        validate({"trainer": {"early_stopping_patience": 2}})


def test_qlora_means_nf4():
    assert validate({"adapter": {"type": "qlora"}}).adapter.quantization == "nf4"


def test_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  epochs: 1\n")
    cfg = load_config(p, ["trainer.epochs=2", "adapter.r=8", "adapter.target_modules=[q_proj, k_proj]", "trainer.max_grad_norm="])
    assert cfg.trainer.epochs == 2 and cfg.adapter.r == 8 and cfg.adapter.target_modules == ["q_proj", "k_proj"]
    assert cfg.trainer.max_grad_norm is None
    assert cfg.output.name == "c"
    with pytest.raises(UsageError, match="expected key=value"):
        load_config(p, ["trainer.epochs"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(p)


def test_a_section_that_is_not_a_mapping_is_a_usage_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("output: runs/\n")  # a common slip for output: {dir: runs/}
    with pytest.raises(UsageError, match="output: input should be a valid dictionary"):
        load_config(p)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_says_how_to_run(path):
    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# retune "), "every example opens with the command that runs it"


def test_tasks_replace_the_single_task_keys():
    cfg = validate(
        {"data": {"tasks": [{"train": "rotten-tomatoes", "weight": 2}, {"train": "python-faq", "weight": 1, "loss_weight": 0.5}]}}
    )
    assert [t.train for t in cfg.data.task_list()] == ["rotten-tomatoes", "python-faq"]
    assert cfg.data.tasks[1].loss_weight == 0.5
    # the shorthand is one task
    one = validate({"data": {"train": "x.jsonl", "max_eval_samples": 5}}).data.task_list()
    assert len(one) == 1 and one[0].train == "x.jsonl" and one[0].max_eval_samples == 5
    with pytest.raises(UsageError, match=r"data.template cannot be combined with data.tasks"):
        validate({"data": {"template": {"prompt": "{a}"}, "tasks": [{"train": "rotten-tomatoes"}]}})
    with pytest.raises(UsageError, match=r"unknown key 'data.tasks.0.wieght'.*did you mean 'weight'"):
        validate({"data": {"tasks": [{"train": "rotten-tomatoes", "wieght": 1}]}})
    with pytest.raises(UsageError, match=r"mixing=fractions needs a weight"):
        validate({"data": {"mixing": "fractions", "tasks": [{"train": "a.jsonl", "weight": 1}, {"train": "b.jsonl"}]}})
    with pytest.raises(UsageError, match=r"no task has a train source"):
        validate({"data": {"tasks": [{"test": "humaneval"}]}})
    with pytest.raises(UsageError, match=r"data.tasks.0.metric"):
        validate({"data": {"tasks": [{"train": "a.jsonl", "metric": "f1"}]}})


def test_old_run_directory_with_every_shorthand_default_beside_tasks_loads(tmp_path):
    """Run directories written before to_yaml dropped the shorthand keys carry all of them at their defaults."""
    from retune.config import DataConfig, TaskDataConfig

    old = {k: f.get_default(call_default_factory=True) for k, f in TaskDataConfig.model_fields.items()}
    old["train"] = "rotten-tomatoes"
    cfg = validate({"data": {**old, "tasks": [{"train": "a.jsonl"}, {"train": "b.jsonl"}]}})
    assert [t.train for t in cfg.data.task_list()] == ["a.jsonl", "b.jsonl"] and cfg.data.train is None
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved).data == cfg.data
    assert DataConfig().train == "rotten-tomatoes" and DataConfig().task_list()[0].train == "rotten-tomatoes"
    # a shorthand key that is not at its default is a clash, validation_split included (it was ignored)
    with pytest.raises(UsageError) as e:
        validate({"data": {"validation_split": 0.2, "tasks": [{"train": "a.jsonl"}]}})
    assert str(e.value) == (
        "config: data.validation_split cannot be combined with data.tasks: set it on each task (data.tasks[i].validation_split)"
    )


def test_shorthand_keys_are_declared_once():
    from retune.config import DataConfig, TaskConfig, TaskDataConfig
    from retune.config.data import TASK_SHORTHAND

    assert TASK_SHORTHAND == tuple(TaskDataConfig.model_fields) and len(TASK_SHORTHAND) == 12
    for cls in (DataConfig, TaskConfig):
        assert not set(TASK_SHORTHAND) & set(cls.__annotations__), f"{cls.__name__} declares a shorthand key again"
        assert all(cls.model_fields[k].description == TaskDataConfig.model_fields[k].description for k in TASK_SHORTHAND)
    one = validate({"data": {"train": "x.jsonl", "validation_split": 0.3, "labels": ["a", "b"], "columns": {"q": "question"}}})
    (task,) = one.data.task_list()
    assert task.model_dump() == TaskConfig(train="x.jsonl", validation_split=0.3, labels=["a", "b"], columns={"q": "question"}).model_dump()


def test_adapter_type_must_be_known():
    with pytest.raises(UsageError) as e:
        validate({"adapter": {"type": "lorra"}})
    msg = str(e.value)
    assert msg.startswith(
        "config: adapter.type 'lorra' is not an adapter type (did you mean 'lora'?); "
        "use one of full, lora, qlora, dora, ia3, prefix_tuning, prompt_tuning, p_tuning, or another peft method: "
    )
    assert "loha" in msg and "\n" not in msg
    assert validate({"adapter": {"type": "LoRA"}}).adapter.type == "lora"
    assert validate({"adapter": {"type": "loha"}}).adapter.type == "loha"  # any peft method by its name


def test_adapter_type_lorra_fails_retune_validate(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("adapter:\n  type: lorra\n")
    with pytest.raises(UsageError, match=r"^config: adapter.type 'lorra' is not an adapter type \(did you mean 'lora'\?\)"):
        load_config(p)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n", "---\n"])
def test_empty_config_file_is_an_error(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        load_config(p)
    fix = "start from examples/quickstart.yaml, or write `{}` to run on every default"
    assert str(e.value) == f"config file {p} is empty (no keys); {fix}"
    p.write_text("{}\n")
    assert load_config(p).model_dump(exclude={"output"}) == RetuneConfig().model_dump(exclude={"output"})


def test_stage_names_are_checked_with_the_config():
    ok = validate({"stages": [{"name": "a", "task": {"train": "x.jsonl"}}, {"name": "b", "task": {"train": "x.jsonl"}}]})
    assert [s.task._where for s in ok.stages] == ["stages[0].task", "stages[1].task"]
    cases = [
        ([{"name": "s", "task": {"train": "x.jsonl"}}, {"name": "s", "task": {"train": "y.jsonl"}}], "s"),
        ([{"task": {"train": "rotten-tomatoes"}}, {"task": {"train": "rotten-tomatoes", "max_train_samples": 10}}], "rotten-tomatoes"),
        ([{"task": {"train": "a/x.jsonl"}}, {"task": {"train": {"path": "b/x.jsonl"}}}], "x"),  # both would log as x
        ([{"name": "t", "task": {"train": "x.jsonl"}}, {"task": {"name": "t", "train": "y.jsonl"}}], "t"),
    ]
    for stages, name in cases:
        with pytest.raises(UsageError) as e:
            validate({"stages": stages})
        fix = "give them distinct names (stages[1].name)"
        assert str(e.value) == f"config: stages[0] and stages[1] both train a task named '{name}'; {fix}"
    with pytest.raises(UsageError) as e:
        validate({"stages": [{"task": {"test": "humaneval"}}]})
    assert str(e.value) == "config: stages[0].task has no train source; every stage trains (give stages[0].task.train)"


def test_task_needs_a_source_and_encoding_must_exist():
    with pytest.raises(UsageError) as e:
        validate({"data": {"tasks": [{"train": "a.jsonl"}, {"name": "b", "metric": "accuracy"}]}})
    assert str(e.value) == (
        "config: data.tasks.1: a task needs a train source, or a test source for an evaluation-only task (e.g. {test: humaneval})"
    )
    with pytest.raises(UsageError) as e:
        validate({"data": {"train": {"path": "a.csv", "encoding": "latin-9x"}}})
    assert str(e.value) == (
        "config: data.train.encoding: 'latin-9x' is not a text encoding Python knows; use e.g. utf-8, latin-1, cp1252 or utf-16"
    )
    assert validate({"data": {"train": {"path": "a.csv", "encoding": "latin-1"}}}).data.train.encoding == "latin-1"
