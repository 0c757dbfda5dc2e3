"""``reports/index.html`` in a real headless browser: Chromium from the system's packages, driven by Playwright.

The page is written by ``write_reports`` from the real smoke store of ``tests/data`` (13 methods, one seed:
one table row per stored accuracy row), with one run's ``config.json`` carrying ``</script>`` in a method
parameter. The test opens it from ``file://``, fails on any console error (a Content-Security-Policy
violation included: the page may fetch nothing), counts the rows, sorts by a column both ways, filters,
and writes a screenshot to ``$BENCH_SCREENSHOT_DIR`` (else the test's tmp_path).

Without Playwright or Chromium the test is skipped with the reason, except under CI (``CI`` set), where
a missing browser is a failure: CI installs both (``apt-get install chromium``; ``pip install -e .[dev]``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from report_stores import GOLDEN_ORDER, SMOKE_STORE

from bench.products.report import write_reports
from bench.products.report.tables import TABLE_ATTACKS

# Quiet, offline Chromium: without these it tries to reach Google's services and logs every refusal
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INJECTION = "</script><script>window.injected = 1</script>"


def _chromium() -> str:
    """The system Chromium's path; skips (fails under CI) when it or Playwright is missing."""
    reason = ""
    try:
        import playwright.sync_api  # noqa: F401  (optional: only this test needs it)
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not reason and path is None:
        reason = "no chromium on PATH (apt-get install chromium)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    return path


def _report(root: Path) -> Path:
    shutil.copytree(SMOKE_STORE, root / "results")
    run_id = sorted(path.name for path in (root / "results" / "runs").iterdir() if path.name.startswith("acl-smoke"))[0]
    config = {"method": "acl", "run_id": run_id, "method_params": {"note": INJECTION}, "environment": {}}
    (root / "results" / "runs" / run_id / "config.json").write_text(json.dumps(config))
    write_reports(
        root / "results" / "results.csv",
        root / "reports",
        root / "results" / "runs",
        None,
        method_order=GOLDEN_ORDER,
    )
    return root / "reports" / "index.html"


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _column(page, key: str) -> list[float]:
    return [
        float(value)
        for value in page.locator(f'#results-table td[data-key="{key}"]').evaluate_all(
            "cells => cells.map(cell => cell.dataset.sort)"
        )
    ]


@pytest.mark.e2e
def test_the_page_loads_sorts_and_filters_in_chromium(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright  # optional dependency, checked by _chromium

    page_path = _report(tmp_path)
    stored = [
        line
        for line in _read_csv(tmp_path / "results" / "results.csv")
        if line["metric"] == "accuracy" and line["attack"] in {attack for attack, _ in TABLE_ATTACKS}
    ]
    table = [line for line in _read_csv(tmp_path / "reports" / "results.csv") if line["mean"] != ""]
    assert len(stored) == len(table) == 117  # 13 methods × 3 schemes × (SA, PGD-20, AA), one seed each
    shots = Path(os.environ.get("BENCH_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            rows = page.locator("#results-table tbody tr")
            assert rows.count() == len(stored)
            assert page.locator("#row-count").inner_text() == f"{len(stored)} of {len(stored)} rows"
            # sorting: the accuracy column ascending on the first click, descending on the second
            before = _column(page, "accuracy")
            header = page.locator('#results-table th[data-key="accuracy"]')
            header.click()
            ascending = _column(page, "accuracy")
            assert ascending == sorted(before) and ascending != before
            assert header.get_attribute("aria-sort") == "ascending"
            header.click()
            assert _column(page, "accuracy") == sorted(before, reverse=True)
            assert header.get_attribute("aria-sort") == "descending"
            # filters: a method, then a scheme on top, then text
            page.select_option("#filter-method", "acl")
            assert rows.count() == sum(line["method"] == "acl" for line in table) == 9
            page.select_option("#filter-scheme", "AFF")
            assert rows.count() == 3
            page.select_option("#filter-method", "")
            page.select_option("#filter-scheme", "")
            page.fill("#filter-text", "pgd-20")  # case-insensitive, in any column
            assert rows.count() == sum(line["attack"] == "pgd20" for line in table) == 39
            page.fill("#filter-text", "")
            assert rows.count() == len(stored)
            # the injected parameter is shown as text and ran nothing
            assert page.evaluate("typeof window.injected") == "undefined"
            acl = page.locator('details.method[data-method="acl"]')
            acl.evaluate("node => { node.open = true; }")
            assert INJECTION in acl.locator("pre.config").inner_text()
            assert page.locator("#figures img").count() == 5
            assert page.locator("#sanity-summary").inner_text().startswith("234 checks over 39 evaluations; 0 failed")
            acl.evaluate("node => { node.open = false; }")
            header.click()  # back to ascending for the picture
            screenshot = page.screenshot(path=str(shots / "report_index.png"))
        finally:
            browser.close()
    assert errors == []
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and (shots / "report_index.png").stat().st_size > 10_000
