"""report.html in a real browser: headless Chromium with the network switched off opens each kind of
report from disk (a run, a stages run, runs compared, a search); every chart draws its marks, the
console stays clean, nothing is requested beyond the file itself, and the examples filter works."""

from __future__ import annotations

import json

import pytest

import browser
from helpers import flipped_copy
from retune.report.build import build

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=browser.missing() or "")


@pytest.fixture(scope="module")
def driver():
    d = browser.start()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def pages(report_runs, tmp_path_factory) -> dict:
    """One report of each kind, built from the real tiny runs."""
    tmp = tmp_path_factory.mktemp("pages")
    flipped = flipped_copy(report_runs["finetune"], tmp / "finetune-flipped")
    search = tmp / "search"
    search.mkdir()
    trials = [
        {"number": 0, "state": "COMPLETE", "params": {"lr": 0.05}, "values": [2.0, -1.0], "run_dir": str(report_runs["finetune"])},
        {"number": 1, "state": "COMPLETE", "params": {"lr": 0.01}, "values": [1.0, -3.0], "run_dir": str(report_runs["stages"])},
    ]
    (search / "tune.json").write_text(json.dumps({"trials": trials}))
    return {
        "run": build([str(flipped)]),
        "stages": report_runs["stages"] / "report.html",
        "compare": build([str(report_runs["finetune"]), str(report_runs["stages"])], str(tmp / "compare.html")),
        "search": build([str(search)]),
    }


@pytest.mark.parametrize("kind, n_charts", [("run", 5), ("stages", 6), ("compare", 5), ("search", 6)])
def test_every_chart_renders_offline_with_a_clean_console(driver, pages, kind, n_charts, tmp_path):
    page = browser.open_report(driver, pages[kind])
    assert len(page.charts) == n_charts
    for chart in page.charts:
        assert chart["svg"] and chart["marks"] > 0, chart
    assert page.console_errors == []
    assert page.failed == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in page.requests), page.requests
    driver.save_screenshot(str(tmp_path / f"{kind}.png"))
    assert (tmp_path / f"{kind}.png").stat().st_size > 10_000


def test_changed_examples_filter(driver, pages):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.open_report(driver, pages["run"])
    assert browser.visible_rows(driver) == 3
    Select(driver.find_element(By.ID, "example-dir")).select_by_value("worse")
    assert browser.visible_rows(driver) == 2
    assert driver.find_element(By.ID, "example-count").text == "2"
    Select(driver.find_element(By.ID, "example-dir")).select_by_value("")
    driver.find_element(By.ID, "example-filter").send_keys("a changed answer")
    assert browser.visible_rows(driver) == 2
    driver.find_element(By.ID, "example-filter").send_keys(" that no example holds")
    assert browser.visible_rows(driver) == 0
