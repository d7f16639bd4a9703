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
