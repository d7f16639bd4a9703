"""Bad input through the real CLI: exit 2, one line naming the problem, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import tiny_config, write_jsonl
from helpers import write_config
from retune.cli import app

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stderr.strip()


def _cfg(tmp_path, tiny_model, tiny_data, **sections):
    return str(write_config(tmp_path / "c.yaml", tiny_config(tiny_model, tiny_data, tmp_path / "runs", **sections)))


def _one_clean_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")


@pytest.mark.parametrize(
    "sections, needle",
    [
        ({"adapter": {"rr": 4}}, "unknown key 'adapter.rr' (did you mean 'r'?)"),
        ({"trainer": {"epochs": "many"}}, "trainer.epochs"),
        ({"data": {"train": "/nope/train.jsonl"}}, "data file not found"),
        ({"data": {"template": {"prompt": "{review}", "response": "{label}"}}}, "available columns: label, text"),
        ({"model": {"base": "smolm2"}}, "unknown built-in model 'smolm2'"),
        ({"model": {"base": "/nope/model"}}, "model path does not exist"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, tiny_model, tiny_data, sections, needle):
    code, err = _run("train", _cfg(tmp_path, tiny_model, tiny_data, **sections))
    assert code == 2, err
    _one_clean_line(err)
    assert needle in err


def test_malformed_jsonl_line_number(tmp_path, tiny_model, tiny_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "positive"}\n{"text": oops}\n')
    code, err = _run("validate", _cfg(tmp_path, tiny_model, tiny_data, data={"train": str(bad)}))
    assert code == 2
    _one_clean_line(err)
    assert "bad.jsonl:2: malformed JSON line" in err


def test_empty_dataset(tmp_path, tiny_model, tiny_data):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = _run("train", _cfg(tmp_path, tiny_model, tiny_data, data={"train": str(empty)}))
    assert code == 2 and "empty" in err
    _one_clean_line(err)


def test_response_dropped_by_truncation(tmp_path, tiny_model, tiny_data):
    long = write_jsonl(tmp_path / "long.jsonl", [{"text": "great", "label": "positive " * 40}] * 4)
    code, err = _run("train", _cfg(tmp_path, tiny_model, tiny_data, data={"train": str(long), "max_length": 16}))
    assert code == 2 and "truncation would drop it" in err and "record 1" in err
    _one_clean_line(err)


def test_corrupt_model_folder(tmp_path, tiny_model, tiny_data):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code, err = _run("train", _cfg(tmp_path, tiny_model, tiny_data, model={"base": str(broken)}))
    assert code == 2, err
    _one_clean_line(err)
    assert "cannot load model" in err


def test_real_process_exit_code_and_stderr(tmp_path, tiny_model, tiny_data):
    cfg = _cfg(tmp_path, tiny_model, tiny_data, adapter={"rr": 4})
    proc = subprocess.run([sys.executable, "-m", "retune.cli", "validate", cfg], capture_output=True, text=True)
    assert proc.returncode == 2
    _one_clean_line(proc.stderr.strip())


def test_validate_ok_and_generate_predict_eval(tmp_path, tiny_model, tiny_data):
    cfg = _cfg(tmp_path, tiny_model, tiny_data)
    code = runner.invoke(app, ["validate", cfg]).exit_code
    assert code == 0
    result = runner.invoke(app, ["train", cfg, "--set", "trainer.max_steps=2"])
    assert result.exit_code == 0, result.stderr
    run_dir = result.stdout.strip().splitlines()[-1].rsplit("/", 1)[0]
    unseen = write_jsonl(tmp_path / "unseen.jsonl", [{"text": "a truly great film"}, {"text": "dull and boring"}])
    result = runner.invoke(app, ["predict", run_dir, "--input", str(unseen)])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["text"] for r in rows] == ["a truly great film", "dull and boring"]
    assert all(r["prediction"] in ("positive", "negative") for r in rows)
    result = runner.invoke(app, ["generate", run_dir, "a great film", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.stderr
    from retune.inference.tuned import generate_text

    # the command prints the tuned model's greedy continuation: the same text as generating in-process
    assert result.stdout.rstrip("\n") == generate_text(run_dir, "a great film", max_new_tokens=4)
    result = runner.invoke(app, ["eval", run_dir])
    assert result.exit_code == 0, result.stderr
    assert "accuracy" in json.loads(result.stdout)["train"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_output_dir_that_is_a_file_exits_2_and_writes_nothing(tmp_path, tiny_model, tiny_data, nproc):
    taken = tmp_path / "runs"
    taken.write_text("not a folder")
    code, err = _run("train", _cfg(tmp_path, tiny_model, tiny_data), "--nproc", str(nproc))
    assert code == 2, err
    _one_clean_line(err)
    assert "output.dir" in err and "is a file" in err
    assert taken.read_text() == "not a folder"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    code, err = _run("train", "--resume", str(tmp_path))
    assert code == 2
    _one_clean_line(err)
    assert f"--resume {tmp_path} is not a run directory (no config.yaml)" in err
