"""``reports/index.html`` as a string (fast, no browser, no figures drawn): the rows are the Markdown table's,
everything from the store is escaped, and the page loads nothing from a network.

The browser test (``test_report_browser.py``) opens the page in Chromium and sorts and filters it.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from report_stores import GOLDEN_ORDER, row, synthetic_rows, write_sanity, write_store

from bench.engine import progress
from bench.products.report.common import Artifact, MethodOrder
from bench.products.report.html import render_page, result_rows, script_json
from bench.products.report.render import table_csv_rows, table_markdown
from bench.products.report.sanity import sanity_rows
from bench.products.report.tables import build_tables
from bench.store.rows import load

INJECTION = "</script><script>window.injected = 1</script><!--"
DATA_BLOCK = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def _page(root: Path, rows: list[dict], artifacts=(), configs: dict | None = None) -> tuple[str, list]:
    results_csv = write_store(root, rows)
    runs = root / "results" / "runs"
    for run_id, config in (configs or {}).items():
        (runs / run_id).mkdir(parents=True, exist_ok=True)
        (runs / run_id / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    results, order = load(results_csv), MethodOrder(GOLDEN_ORDER)
    tables = build_tables(results, order)
    page = render_page(
        tables, sanity_rows(results, runs), list(artifacts), results, results_csv, runs, root / "reports", order
    )
    return page, tables


def _data(page: str) -> dict:
    blocks = DATA_BLOCK.findall(page)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def test_the_rows_are_the_measured_cells_with_the_markdown_text(tmp_path):
    page, tables = _page(tmp_path, synthetic_rows())
    rows = _data(page)["rows"]
    measured = [line for table in tables for line in table_csv_rows(table) if line["mean"] != ""]
    assert len(rows) == len(measured) == 11  # each measured cell once; an unmeasured one (– in Markdown) is no row
    assert [(r["cells"]["method"][0], r["cells"]["scheme"][0]) for r in rows] == [
        (line["method"], line["scheme"]) for line in measured
    ]
    # each accuracy text is its Markdown cell (bold there when best here), from the same Table cells
    markdown = "\n".join(table_markdown(table) for table in tables)
    for line in rows:
        text = line["cells"]["accuracy"][0]
        shown = f"**{text}**" if line["best"] else text
        if text.endswith("†"):  # Markdown puts the suspect mark after the bold
            shown = f"**{text[:-1]}**†" if line["best"] else text
        method_line = next(
            part for part in markdown.splitlines() if part.startswith(f"| {line['cells']['method'][0]} |")
        )
        assert shown in method_line, (shown, method_line)
    acl = next(r for r in rows if [r["cells"][k][0] for k in ("method", "scheme", "attack")] == ["acl", "SLF", "SA"])
    assert acl["cells"]["accuracy"] == ["91.0 ±12.7", 91.0] and acl["best"]  # 2 seeds: t-interval, bold
    assert acl["cells"]["interval"] == ["[78.3, 103.7] t, seeds", 91.0]  # an interval sorts by its point estimate
    assert acl["cells"]["seeds"] == ["2", 2] and acl["cells"]["data"][0] == "digits → digits"
    rocl = next(r for r in rows if r["cells"]["method"][0] == "rocl" and r["cells"]["attack"][0] == "PGD-20")
    assert rocl["cells"]["accuracy"][0] == "45.0 ±6.1†" and rocl["cells"]["flags"][0] == "suspect:aa>pgd20"
    assert [c["key"] for c in _data(page)["filters"]] == ["method", "scheme", "attack", "data", "protocol"]


def test_a_method_level_verdict_is_shown_with_its_interval(tmp_path):
    """Two seeds of acl and acl-ip without per-image records: the paired t over seeds gives the verdict."""
    rows = [
        row(f"{method}-s{seed}", method, "SLF", "pgd20", value, seed=seed)
        for method, values in (("acl", (40.0, 41.0, 39.0)), ("acl-ip", (50.0, 52.0, 49.5)))
        for seed, value in enumerate(values)
    ]
    from bench.products.report.significance import compare_with_bases

    page, tables = _page(tmp_path, rows)
    tables[0].versus_base = compare_with_bases(tables[0], tmp_path / "results" / "runs")
    data = result_rows(tables)
    variant = next(r for r in data if r["cells"]["method"][0] == "acl-ip")
    comparison = tables[0].versus_base[("acl-ip", "SLF", "pgd20")]
    assert variant["cells"]["accuracy"][0].endswith("▲") and comparison.verdict == "variant better"
    assert variant["cells"]["versus_base"][0].startswith(f"{comparison.difference:+.1f} [{comparison.low:+.1f}, ")
    assert "variant better · method (3 seeds)" in variant["cells"]["versus_base"][0]
    assert variant["cells"]["versus_base"][1] == pytest.approx(comparison.difference)


def test_store_text_with_script_tags_renders_as_text(tmp_path):
    """A method name, a method parameter, a sanity detail and the results path holding ``</script>`` stay text."""
    root = tmp_path / "a<script>b"
    rows = synthetic_rows() + [row("evil-s0", INJECTION, "SLF", "clean", 50.0)]
    configs = {"acl-s0": {"method": "acl", "method_params": {"note": INJECTION}, "environment": {"python": "3.12"}}}
    write_sanity(root / "results" / "runs", "acl-s0", {"order": {"passed": False, "detail": INJECTION}})
    page, _ = _page(root, rows, configs=configs)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the JSON block and the page's script
    assert "<!--" not in page and "window.injected" in page
    escaped = "&lt;/script&gt;&lt;script&gt;window.injected = 1&lt;/script&gt;&lt;!--"
    assert escaped in page  # the parameter in the config, the detail in the sanity table, the method's section
    assert "a&lt;script&gt;b" in page  # the results path in the header
    data = _data(page)
    assert INJECTION in {line["cells"]["method"][0] for line in data["rows"]}  # decoded back by JSON.parse
    block = DATA_BLOCK.search(page).group(1)
    assert "<" not in block and ">" not in block and "\\u003c/script\\u003e" in block


def test_the_page_loads_nothing_from_a_network(tmp_path):
    png = tmp_path / "reports" / "figures" / "bars_x.png"
    png.parent.mkdir(parents=True)
    pixel = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    png.write_bytes(pixel)
    figure = Artifact("figure", "Bars <b>x</b>", [png, png.with_suffix(".pdf")])
    configs = {"acl-s0": {"method": "acl", "source": "https://example.org/released"}}
    page, _ = _page(tmp_path, synthetic_rows(), artifacts=[figure], configs=configs)
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert sources and not [s for s in sources if re.match(r"(?i)([a-z][a-z0-9+.-]*:)?//", s)]
    assert not [s for s in sources if ":" in s and not s.startswith("data:")]  # relative links or data: URIs
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    assert images == [("Bars &lt;b&gt;x&lt;/b&gt;", base64.b64encode(pixel).decode())]
    assert 'href="figures/bars_x.pdf"' in page
    assert "default-src 'none'" in page  # the browser refuses any fetch the page might still attempt
    assert "https://example.org/released" in page  # a URL in a config is shown as text, not loaded


def test_missing_and_unreadable_configs_are_said_not_dropped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", False)
    configs = {"acl-s0": {"method": "acl", "pretrain": {"lr": 0.5}, "environment": {"python": "3.11.9"}}}
    configs["rocl-s0"] = "{not json"
    page, _ = _page(tmp_path, synthetic_rows(), configs=configs)
    assert "&quot;lr&quot;: 0.5" in page and "3.11.9" in page  # the settings; the environment as provenance
    assert "environment" not in page  # the environment block is not repeated among the settings
    assert "runs/rocl-s0/config.json is unreadable (JSONDecodeError)" in page
    assert "no config.json in runs/advcl-c10" in page
    assert capsys.readouterr().err.count("config.json is unreadable") == 1
    # run ids, seeds and the git commit of each method's runs
    acl = page[page.index("<strong>acl</strong>") :]
    acl = acl[: acl.index("</details>")]
    assert "2 run(s), seeds 0, 1" in acl and "acl-s0" in acl and "acl-s1" in acl and "<td>abc</td>" in acl


def test_sanity_summary_counts_and_lists_failures(tmp_path):
    runs = tmp_path / "results" / "runs"
    write_sanity(runs, "acl-s0", {"order": {"passed": True, "detail": "ok"}, "eps0": {"passed": False, "detail": "x"}})
    page, _ = _page(tmp_path, synthetic_rows())
    assert "2 checks over 1 evaluations; 1 failed" in page
    failed = page[page.index("<h3>Failed checks</h3>") :]
    failed = failed[: failed.index("</table>")]
    assert "<td>eps0</td><td>NO</td>" in failed and "<td>order</td>" not in failed


def test_script_json_refuses_nan_and_escapes_markup():
    assert script_json({"a": "<&>"}) == '{"a": "\\u003c\\u0026\\u003e"}'
    with pytest.raises(ValueError):
        script_json({"a": float("nan")})
