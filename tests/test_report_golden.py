"""The report's output, byte for byte, against golden files (``tests/data/report_golden/<case>/``).

Each case builds a store (``report_stores.GOLDEN_CASES``), writes the reports and compares every
text file (md, csv, tex, index) exactly, after replacing the temporary root by ``<root>`` and the
repository by ``<repo>``; ``index.html`` is left to its own tests (it embeds the figures' pixels).
Figures are compared by name and size only: the pixels depend on the matplotlib and FreeType
versions, so a size within ±35% is accepted; a blank or missing figure is not.

A change of output that is meant (a new column, a fixed bug) is recorded by regenerating the golden
files in a commit of its own that says what changed and why:
``ACL_BENCH_UPDATE_GOLDEN=1 pytest tests/test_report_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from report_stores import GOLDEN, GOLDEN_CASES, GOLDEN_ORDER, REPO

from bench.products.report import write_reports

TEXT_SUFFIXES = (".md", ".csv", ".tex")
PAGE = "index.html"  # its own tests (test_report_html.py, test_report_browser.py): it embeds the figures' pixels
FIGURE_SIZES = "figures.json"
SIZE_TOLERANCE = 0.35
UPDATE = os.environ.get("ACL_BENCH_UPDATE_GOLDEN") == "1"


def _snapshot(reports_dir: Path, root: Path) -> tuple[dict[str, str], dict[str, int]]:
    texts, figures = {}, {}
    for path in sorted(reports_dir.rglob("*")):
        name = path.relative_to(reports_dir).as_posix()
        if name == PAGE:
            continue
        if path.suffix in TEXT_SUFFIXES:
            texts[name] = path.read_text().replace(str(root), "<root>").replace(str(REPO), "<repo>")
        elif path.is_file():
            figures[name] = path.stat().st_size
    return texts, figures


def _write_golden(directory: Path, texts: dict[str, str], figures: dict[str, int]) -> None:
    if directory.exists():
        for path in sorted(directory.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    for name, text in texts.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    (directory / FIGURE_SIZES).write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_reports_match_golden_files(case, tmp_path):
    spec = GOLDEN_CASES[case](tmp_path)
    reports_dir = tmp_path / "reports"
    write_reports(
        spec["results_csv"],
        reports_dir,
        spec["runs_dir"],
        spec["reference_dir"],
        paper=spec.get("paper", False),
        method_order=GOLDEN_ORDER,
    )
    texts, figures = _snapshot(reports_dir, tmp_path)
    golden_dir = GOLDEN / case
    if UPDATE:
        _write_golden(golden_dir, texts, figures)
    golden_texts = {
        path.relative_to(golden_dir).as_posix(): path.read_text()
        for path in sorted(golden_dir.rglob("*"))
        if path.suffix in TEXT_SUFFIXES
    }
    assert sorted(texts) == sorted(golden_texts)
    for name, text in texts.items():
        assert text == golden_texts[name], f"{case}/{name} differs from its golden file"
    golden_figures = json.loads((golden_dir / FIGURE_SIZES).read_text())
    assert sorted(figures) == sorted(golden_figures)
    for name, size in figures.items():
        assert abs(size - golden_figures[name]) <= SIZE_TOLERANCE * golden_figures[name], (name, size)
