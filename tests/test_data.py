import json

import pandas as pd
import pytest

from conftest import make_reviews, write_jsonl
from retune.config import DataConfig, EvalConfig, TemplateConfig
from retune.data.batching import batch_indices, collate
from retune.data.dataset import load_task, load_task_config
from retune.data.readers import read_records
from retune.data.templates import Encoded, Formatter, check_fields
from retune.errors import UsageError
from retune.models.load import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_readers_agree_across_formats(tmp_path):
    rows = make_reviews(5)
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "hf"):
        assert read_records(tmp_path / name) == rows, name


def test_malformed_jsonl_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "positive"}\n{"text": "b", "label": \n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: malformed JSON line"):
        read_records(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UsageError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        read_records(tmp_path / "empty.jsonl")


def test_template_field_not_in_data_lists_columns():
    with pytest.raises(UsageError, match=r"\{review\}.*available columns: label, text"):
        check_fields(TemplateConfig(prompt="{review}", response="{label}"), make_reviews(2), "x.jsonl")


def test_loss_only_on_response_by_default(tok):
    fmt = Formatter(tok, DataConfig(max_length=64))
    enc = fmt.encode("Review: great film", "positive")
    response = [t for t in enc.labels if t != -100]
    assert tok.decode(response).startswith("positive<|im_end|>")
    assert enc.labels[: enc.prompt_len] == [-100] * enc.prompt_len
    assert tok.decode(enc.input_ids[: enc.prompt_len]).endswith("<|im_start|>assistant\n")
    all_tokens = Formatter(tok, DataConfig(max_length=64, train_on_prompt=True)).encode("Review: great film", "positive")
    assert -100 not in all_tokens.labels


def test_truncation_keeps_the_response(tok):
    fmt = Formatter(tok, DataConfig(max_length=16))
    enc = fmt.encode("great " * 50, "positive")
    assert len(enc.input_ids) == 16
    assert tok.decode([t for t in enc.labels if t != -100]).startswith("positive")


def test_response_longer_than_limit_is_an_error_or_cut(tok):
    with pytest.raises(UsageError, match="truncation would drop it"):
        Formatter(tok, DataConfig(max_length=8)).encode("hi", "great " * 20, where="train record 3")
    fmt = Formatter(tok, DataConfig(max_length=8, truncate_response=True))
    enc = fmt.encode("hi", "great " * 20)
    assert len(enc.input_ids) == 8 and fmt.cut_responses == 1


def test_plain_format_appends_eos(tok):
    fmt = Formatter(tok, DataConfig(format="plain", max_length=64))
    enc = fmt.encode("Review: great\nSentiment:", " positive")
    assert enc.input_ids[-1] == tok.eos_token_id


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "positive"} for i in range(50)])
    data = DataConfig(train=str(p), template=TemplateConfig(prompt="{text}", response="{label}"), validation_split=0.2)
    a, b = load_task(data, EvalConfig()), load_task(data, EvalConfig())
    assert [r["text"] for r in a.validation] == [r["text"] for r in b.validation]
    assert len(a.validation) == 10 and len(a.train) == 40
    assert not {r["text"] for r in a.validation} & {r["text"] for r in a.train}
    assert a.metric == "rouge_l"


def test_column_mapping(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"review": "x", "y": "positive"}] * 4)
    data = DataConfig(train=str(p), columns={"text": "review", "label": "y"}, template=TemplateConfig(prompt="{text}", response="{label}"))
    assert load_task(data, EvalConfig()).train[0]["text"] == "x"
    bad = DataConfig(train=str(p), columns={"text": "nope"}, template=TemplateConfig(prompt="{text}", response="{y}"))
    with pytest.raises(UsageError, match="'nope'.*available columns"):
        load_task(bad, EvalConfig())


def test_batches_cover_each_example_once_per_epoch():
    lengths = [i % 17 + 1 for i in range(100)]
    batches = batch_indices(lengths, 8, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert batches == batch_indices(lengths, 8, seed=3, epoch=0)
    assert batches != batch_indices(lengths, 8, seed=3, epoch=1)


def test_collate_pads_right_with_masked_labels(tok):
    fmt = Formatter(tok, DataConfig(max_length=64))
    a, b = fmt.encode("great", "positive"), fmt.encode("a truly dull film", "negative")
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2
    short = 0 if len(a.input_ids) < len(b.input_ids) else 1
    assert batch["labels"][short, -1] == -100 and batch["attention_mask"][short, -1] == 0


def test_collate_rounds_the_width_up_to_a_multiple_of_eight():
    rows = [Encoded([1, 2, 3], [-100, 2, 3], 1), Encoded(list(range(1, 11)), [-100] * 9 + [10], 1)]
    batch = collate(rows, 0)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 16)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 10]  # the rounding is padding: masked, unlabelled
    assert (batch["labels"][:, 10:] == -100).all() and (batch["input_ids"][:, 10:] == 0).all()
    assert collate(rows[:1] * 2, 0)["input_ids"].shape == (2, 8) and collate([Encoded([1] * 8, [1] * 8, 1)], 0)["input_ids"].shape == (1, 8)


def test_max_val_samples_caps_the_validation_set_alone(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "positive"} for i in range(50)])
    v = write_jsonl(tmp_path / "v.jsonl", [{"text": f"v{i}", "label": "positive"} for i in range(30)])
    tpl = TemplateConfig(prompt="{text}", response="{label}")
    both = load_task(DataConfig(train=str(p), validation=str(v), template=tpl, max_eval_samples=20), EvalConfig())
    val = load_task(DataConfig(train=str(p), validation=str(v), template=tpl, max_eval_samples=20, max_val_samples=4), EvalConfig())
    assert (len(both.validation), len(both.test)) == (20, 20) and (len(val.validation), len(val.test)) == (4, 20)
    assert val.validation == both.validation[:4] and val.test == both.test  # a prefix of the same order


def test_load_tasks_several_and_eval_only(tmp_path):
    from retune.config import TaskConfig
    from retune.data.dataset import load_tasks

    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": "positive"} for i in range(20)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)])
    tpl_a = TemplateConfig(prompt="{text}", response="{label}")
    data = DataConfig(
        tasks=[
            TaskConfig(name="sent", train=str(a), template=tpl_a, labels=["negative", "positive"], weight=3, loss_weight=2),
            TaskConfig(train=str(b), template=TemplateConfig(prompt="{q}", response="{a}"), metric="exact_match", max_eval_samples=2),
            TaskConfig(name="held", test=str(b), template=TemplateConfig(prompt="{q}", response="{a}"), stop=["\n"]),
        ]
    )
    sent, qa, held = load_tasks(data, EvalConfig())
    assert (sent.name, sent.metric, sent.weight, sent.loss_weight, len(sent.train), len(sent.validation)) == (
        "sent",
        "accuracy",
        3,
        2,
        18,
        2,
    )
    assert (qa.name, qa.metric, len(qa.test)) == ("b", "exact_match", 1)  # test = its validation slice
    assert held.train == [] and len(held.test) == 10 and held.validation == held.test and held.stop == ["\n"]
    # two tasks that would log under one name are a config error, before any data is read
    from retune.config import validate

    dup = {"data": {"tasks": [{"train": str(a)}, {"train": str(tmp_path / "other" / "a.jsonl")}]}}
    with pytest.raises(UsageError) as e:
        validate(dup)
    assert str(e.value) == "config: data.tasks[0] and data.tasks[1] are both named 'a'; give them distinct names (data.tasks[1].name)"


def _one_task(tmp_path, train, **data):
    tpl = TemplateConfig(prompt="{text}", response="{label}")
    return load_task(DataConfig(train=train, template=tpl, **data), EvalConfig())


def test_latin1_csv_loads_with_its_encoding(tmp_path):
    from retune.config import SourceConfig

    rows = [{"text": f"caf\u00e9 cr\u00e8me {i}", "label": "positive"} for i in range(10)]
    p = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(p, index=False, encoding="latin-1")
    task = _one_task(tmp_path, SourceConfig(path=str(p), encoding="latin-1"))
    assert sorted(r["text"] for r in task.train + task.validation) == sorted(r["text"] for r in rows)
    # read as UTF-8 (the default), it is one line naming the file, the line, the byte and the fix
    with pytest.raises(UsageError) as e:
        _one_task(tmp_path, str(p))
    assert str(e.value) == (
        f"{p} line 2: not UTF-8 text (byte 0xe9 at column 4); if the file is latin-1, "
        f"set encoding: latin-1 on the source (data.train: {{path: {p}, encoding: latin-1}})"
    )


def test_utf8_byte_order_mark_is_not_part_of_a_column(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(make_reviews(4)).to_csv(index=False).encode())
    assert read_records(p) == make_reviews(4)


def test_binary_data_files_are_one_line(tmp_path):
    png = tmp_path / "train.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UsageError) as e:
        _one_task(tmp_path, str(png))
    assert str(e.value) == f"{png}: binary data, not text: it is a PNG image; point data.train at a JSONL, JSON or CSV file"
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b'{"text": "a", "label": "positive"}\n{"te\x00xt": 1}\n')
    with pytest.raises(UsageError) as e:
        read_records(nul)
    assert str(e.value) == f"{nul} line 2: binary data, not text (a NUL byte at column 5); point the source at a JSONL, JSON or CSV file"
    utf16 = tmp_path / "notepad.csv"
    utf16.write_bytes("text,label\ngreat,positive\n".encode("utf-16"))
    with pytest.raises(UsageError, match=r"notepad.csv: UTF-16 text .*set encoding: utf-16 on the source \(data.train: \{path: "):
        _one_task(tmp_path, str(utf16))
    assert read_records(utf16, encoding="utf-16") == [{"text": "great", "label": "positive"}]


def test_source_neither_file_nor_builtin(tmp_path, monkeypatch):
    from retune.config import validate
    from retune.data.builtin import BUILTIN_DATASETS
    from retune.data.dataset import load_tasks

    builtins = ", ".join(BUILTIN_DATASETS)
    cfg = validate({"data": {"train": "rotten-tomato"}})
    with pytest.raises(UsageError) as e:
        load_tasks(cfg.data, cfg.eval)
    assert str(e.value) == (
        f"data.train: 'rotten-tomato' is neither a file nor a built-in dataset (did you mean 'rotten-tomatoes'?); built-ins: {builtins}"
    )
    # a path is a missing file, with the nearest file of its folder; the key names the task
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", make_reviews(4))
    tpl = {"prompt": "{text}", "response": "{label}"}
    cfg = validate({"data": {"tasks": [{"train": "train.jsonl", "template": tpl}, {"train": "./trian.jsonl", "template": tpl}]}})
    with pytest.raises(UsageError) as e:
        load_tasks(cfg.data, cfg.eval)
    assert str(e.value) == "data.tasks[1].train: data file not found: ./trian.jsonl (did you mean 'train.jsonl'?)"
    stage = {"task": {"train": "train.jsonl", "test": "nope.csv", "template": tpl}}
    cfg = validate({"retain": {"tasks": [{"test": "humanevel"}]}, "stages": [stage]})
    with pytest.raises(UsageError, match=r"^retain.tasks\[0\].test: 'humanevel' is neither a file nor a built-in dataset \(did you mean"):
        load_task_config(cfg.retain.tasks[0], cfg.data, cfg.eval)
    with pytest.raises(UsageError, match=r"^stages\[0\].task.test: data file not found: nope.csv \(check the path"):
        load_task_config(cfg.stages[0].task.model_copy(update={"name": "x"}), cfg.data, cfg.eval)
