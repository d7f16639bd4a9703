"""report.html and `retune runs` on real tiny runs (conftest.report_runs): what each section draws
is what the run directory holds; several runs compare; a search shows its Pareto front; bad input
is one line and exit 2. tests/test_report_browser.py opens the pages in Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import flipped_copy
from retune.cli import app
from retune.report import charts
from retune.report.build import build
from retune.report.data import RunData
from retune.report.examples import changed, shared
from retune.report.search import Search

runner = CliRunner()


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr.strip()


@pytest.fixture(scope="module")
def flipped(report_runs, tmp_path_factory) -> Path:
    return flipped_copy(report_runs["finetune"], tmp_path_factory.mktemp("flipped") / "finetune-flipped")


def test_train_writes_a_self_contained_report(report_runs):
    run = report_runs["finetune"]
    html = (run / "report.html").read_text()
    assert (run / "report.html").stat().st_size < 5 * 2**20
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)  # plotly.js holds URLs it never fetches here
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup), "a script, style or link fetched from the network"
    assert re.search(r"<script[^>]*>\s*/\*\*?\s*\n?\s*\* plotly\.js v\d", html), "plotly.js is inlined"
    assert "<link" not in html and html.count("Plotly.newPlot(") == 5  # scores, change, loss, learning rate, forgetting
    for anchor in ("run", "data", "scores", "training", "retention", "examples"):
        assert f'<section id="{anchor}">' in html
    assert '<section id="stages">' not in html
    env = json.loads((run / "summary.json").read_text())["environment"]
    assert env["host"] and env["versions"]["torch"] and "retune_commit" in env


def test_forgetting_chart_marks_the_gate(report_runs):
    """The threshold line, the stop and the roll-back sit where metrics.jsonl says they happened."""
    run = RunData.load(report_runs["finetune"])
    events = {r["event"]: r["step"] for r in run.metrics if r.get("event") in ("max_forgetting", "loaded_retained")}
    assert set(events) == {"max_forgetting", "loaded_retained"}  # the fixture's run is stopped and rolled back
    fig = charts.forgetting([run])
    assert fig is not None
    shapes = fig.layout.shapes
    assert [s.y0 for s in shapes if s.type == "line" and s.yref == "y"] == [0.5]
    vlines = {s.line.color: s.x0 for s in shapes if s.xref == "x"}
    assert vlines == {"red": events["max_forgetting"], "green": events["loaded_retained"]}
    xs, ys = run.series("forgetting/general-text")
    assert ys[xs.index(events["max_forgetting"])] > 0.5 >= ys[xs.index(events["loaded_retained"])]


def test_stages_report_draws_the_matrix(report_runs):
    run = RunData.load(report_runs["stages"])
    st = run.summary["stages"]
    fig = charts.stage_matrix(run)
    assert fig is not None and [list(r) for r in fig.data[0].z] == [st["baseline"], *st["R"]]
    xs, _ = run.series("loss")
    assert xs == sorted(xs) and len(set(xs)) == len(xs) == 6  # the second stage's steps follow the first's
    html = (report_runs["stages"] / "report.html").read_text()
    assert '<section id="stages">' in html and "backward transfer" in html and "forward transfer" in html


def test_changed_examples_right_to_wrong_first(flipped):
    run = RunData.load(flipped)
    task = run.tasks[0]
    shown, total = changed(run, task)
    base = {r["i"]: r["accuracy"] for r in run.examples(task, "base")}
    tuned = {r["i"]: r["accuracy"] for r in run.examples(task, "tuned")}
    assert total == len(shown) == sum(base[i] != tuned[i] for i in base) == 3
    assert [e["kind"] for e in shown] == ["right to wrong", "right to wrong", "wrong to right"]
    out = Path(build([str(flipped)]))
    html = out.read_text()
    assert out == flipped / "report.html" and html.count('<tr data-dir="worse"') == 2 and html.count('<tr data-dir="better"') == 1
    assert html.index("a changed answer") < html.index('<tr data-dir="better"')


def test_prompts_show_only_what_differs():
    """The lines every changed prompt shares (chat template, instruction) are shown once, whole lines only."""
    assert shared(["sys\nA b\nend\n", "sys\nA c\nend\n"]) == ("sys\n", "\nend\n")
    assert shared(["one prompt\n"]) == ("", "")
    assert shared(["x\n1", "y\n2"]) == ("", "")


def test_several_runs_compare(report_runs, tmp_path):
    a, b = report_runs["finetune"], report_runs["stages"]
    code, out, err = _cli("report", str(a), str(b), "-o", str(tmp_path / "both.html"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "both.html")
    html = (tmp_path / "both.html").read_text()
    table = html[html.index('<table class="compare">') :]
    assert a.name in table[: table.index("</table>")] and b.name in table[: table.index("</table>")]
    fig = charts.loss_curves([RunData.load(a), RunData.load(b)])
    assert fig is not None
    colours = {t.name.split(":")[0]: t.line.color for t in fig.data if t.name.endswith("train loss")}
    assert set(colours) == {a.name, b.name} and len(set(colours.values())) == 2


def test_search_report_shows_the_pareto_front(report_runs, tmp_path):
    trials = [
        {"number": 0, "state": "COMPLETE", "params": {"lr": 0.05}, "values": [2.0, -1.0], "run_dir": str(report_runs["finetune"])},
        {"number": 1, "state": "COMPLETE", "params": {"lr": 0.01}, "values": [1.0, -3.0], "run_dir": str(report_runs["stages"])},
        {"number": 2, "state": "FAIL", "params": {"lr": 0.5}, "values": None, "run_dir": None},
        {"number": 3, "state": "COMPLETE", "params": {"lr": 0.001}, "values": [0.5, 0.0], "run_dir": "gone"},
    ]
    (tmp_path / "tune.json").write_text(json.dumps({"trials": trials}))
    search = Search.load(tmp_path)
    assert search.front() == [0, 3]  # 1 is dominated by 0; 2 has no values
    assert [r.name for r in search.runs()] == [report_runs["finetune"].name]  # 3's run is not on disk
    code, out, err = _cli("report", str(tmp_path))
    assert code == 0, err
    html = Path(out.strip()).read_text()
    assert '<section id="search">' in html and "Pareto front" in html and '<table class="compare">' in html


def test_runs_lists_every_run_with_its_status(report_runs, tmp_path):
    folder = report_runs["finetune"].parent
    code, out, err = _cli("runs", str(folder), "--json", "--sort", "name")
    assert code == 0, err
    rows = json.loads(out)
    status = {r["name"].split("-")[0]: r["status"] for r in rows}
    assert status == {"finetune": "completed", "stages": "completed", "interrupted": "interrupted"}
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    fine = next(r for r in rows if r["name"].startswith("finetune"))
    summary = json.loads((report_runs["finetune"] / "summary.json").read_text())
    assert fine["worst_retained"] == pytest.approx(-max(r["forgetting"] for r in summary["retention"].values()))
    assert fine["tasks"][0]["tuned"] == pytest.approx(100 * summary["final"]["train"]["accuracy"])
    code, out, _ = _cli("runs", str(folder), "--json", "--sort", "wall_s", "--reverse")
    walls = [r["wall_s"] for r in json.loads(out) if r["wall_s"] is not None]
    assert len(walls) == 2 and walls == sorted(walls, reverse=True)
    code, out, _ = _cli("runs", str(folder))
    assert code == 0 and all(name in out for name in ("completed", "interrupted", report_runs["stages"].name))


def test_runs_lists_broken_and_unfinished_runs(report_runs, tmp_path):
    for name, summary in (("broken", "{not json"), ("failed", json.dumps({"status": "failed: rank 1 exited 1; resume with: ..."}))):
        (tmp_path / name).mkdir()
        shutil.copy(report_runs["finetune"] / "config.yaml", tmp_path / name / "config.yaml")
        (tmp_path / name / "summary.json").write_text(summary)
    (tmp_path / "started").mkdir()
    shutil.copy(report_runs["finetune"] / "config.yaml", tmp_path / "started" / "config.yaml")
    (tmp_path / "not-a-run").mkdir()
    code, out, err = _cli("runs", str(tmp_path), "--json")
    assert code == 0, err
    assert {r["name"]: r["status"] for r in json.loads(out)} == {"broken": "unreadable", "failed": "failed", "started": "incomplete"}
    code, out, _ = _cli("runs", str(tmp_path / "not-a-run"))
    assert code == 0 and "no run directories" in out
    code, _, err = _cli("report", str(tmp_path / "broken"))
    assert code == 2 and err.startswith("error: ") and "summary.json is not valid JSON" in err and len(err.splitlines()) == 1
    code, _, err = _cli("report", str(tmp_path / "started"))  # no summary yet: a report of what there is
    assert code == 0, err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["report", "{tmp}/nope"], "is not a run directory or a search directory (no such folder)"),
        (["report", "{tmp}"], "is not a run directory or a search directory (no config.yaml, no tune.json)"),
        (["report", "{run}", "-o", "{tmp}"], "is a folder; give a file name"),
        (["runs", "{tmp}/nope"], "no such folder; give the folder that holds run directories"),
        (["runs", "{runs}", "--sort", "speed"], "--sort speed: not a column; use one of name, status"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(report_runs, tmp_path, args, needle):
    run = report_runs["finetune"]
    code, out, err = _cli(*[a.format(tmp=tmp_path, run=run, runs=run.parent) for a in args])
    assert code == 2 and not out
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
