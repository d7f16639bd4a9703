"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium: open a report from disk
with the network switched off, and say what rendered, what the console said and what was requested.
tests/test_report_browser.py uses it; so does the README's screenshot (docs/report.md)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's packages: chromium, chromium-driver
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Each chart's marks: lines and points (scatter traces), bars, heat-map images.
CHARTS_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (el) {
  var svg = el.querySelector('svg.main-svg');
  var marks = el.querySelectorAll('.scatterlayer .trace path, .scatterlayer .point, .barlayer .point, .heatmaplayer image').length;
  return {id: el.id, svg: !!svg, marks: marks, title: (el.querySelector('.gtitle') || {}).textContent || ''};
});
"""


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for path in (CHROMIUM, DRIVER):
        if not Path(path).exists():
            return f"{path} not found: as root run apt-get install -y chromium chromium-driver (make venv does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def start(width: int = 1280, height: int = 1800):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    return driver


@dataclass
class Opened:
    charts: list[dict]
    console_errors: list[str]
    requests: list[str]  # every URL the page asked for (the page itself is file://)
    failed: list[str]


def open_report(driver, path: Path, timeout: float = 20.0) -> Opened:
    """Load the page, wait until every Plotly chart has drawn, collect the logs."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    expected = path.read_text().count('class="plotly-graph-div"')
    WebDriverWait(driver, timeout).until(
        lambda d: len(d.execute_script("return document.querySelectorAll('.js-plotly-plot svg.main-svg')")) >= expected
    )
    charts = driver.execute_script(CHARTS_JS)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    requests, failed = [], []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requests.append(msg["params"]["request"]["url"])
        elif msg["method"] == "Network.loadingFailed":
            failed.append(msg["params"].get("errorText", ""))
    return Opened(charts, errors, requests, failed)


def visible_rows(driver) -> int:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#examples tbody tr')).filter(r => r.style.display !== 'none').length"
    )


def screenshot(driver, report: Path, png: Path, height: int | None = None) -> Opened:
    """Open a report and save a screenshot of the whole page (or its first `height` pixels)."""
    page = open_report(driver, report)
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], min(full, height or full))
    driver.save_screenshot(str(png))
    return page


if __name__ == "__main__":  # python tests/browser.py RUN/report.html docs/report.png [HEIGHT]: the README's screenshot
    import sys

    d = start()
    try:
        shot = screenshot(d, Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
        print(f"{len(shot.charts)} charts, {len(shot.console_errors)} console errors, requests: {shot.requests}")
    finally:
        d.quit()
