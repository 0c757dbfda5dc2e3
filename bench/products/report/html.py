"""``reports/index.html``: the whole report as one self-contained page that opens from disk.

The page is for reading a report in a browser: the results table sortable by any column and filterable by
method, scheme, attack, dataset and protocol (and by text), the figures, the sanity summary, and per method
its configuration, provenance and run ids. It adds nothing to the numbers: every cell is the Markdown
table's own text (``render.cell_text`` on the same in-memory ``Table`` cells: ``mean ±h``, ▲/▼, †, the
best of a column bold), so the page and ``results.md`` cannot disagree.

Self-contained, so that it survives being mailed or copied alone: the results travel as JSON in a
``<script type="application/json">`` (escaped so that no ``</script>`` or ``<!--`` inside a method name,
parameter or path can end the script), the figures as base64 ``data:`` URIs, the style and the vanilla
script (``page.css``, ``page.js`` beside this module; no CDN, no framework) inline. A Content-Security-Policy
forbids every network fetch, so a link that slipped in would fail loudly in the browser test instead of
quietly reaching out. Everything from the store is escaped (``html.escape``) and the script writes text
only (``textContent``), never markup.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.products.report.common import Artifact, MethodOrder, format_epsilon, preset_banner
from bench.products.report.html_sections import figures_section, methods_section, sanity_section
from bench.products.report.index import provenance
from bench.products.report.render import cell_text, table_notes
from bench.products.report.significance import mark
from bench.products.report.tables import Cell, Table, VersusBase
from bench.store.atomic import write_atomic

PAGE = "index.html"
TITLE = "The whole report in one page: sortable, filterable results, figures, sanity, configs (opens from disk)"
# (key, header): the results table's columns, in order
COLUMNS = (
    ("method", "Method"),
    ("data", "Dataset"),
    ("preset", "Preset"),
    ("protocol", "Protocol"),
    ("epsilon", "ε (L∞)"),
    ("scheme", "Scheme"),
    ("attack", "Attack"),
    ("accuracy", "Accuracy % (mean ±h)"),
    ("interval", "95 % interval"),
    ("seeds", "Seeds"),
    ("versus_base", "Variant − base"),
    ("flags", "Flags"),
)
INTERVALS = {"wilson": "Wilson, images", "t": "t, seeds"}  # render.INTERVAL_NAMES, short
FILTERS = ("method", "scheme", "attack", "data", "protocol")  # a select box each; the text box searches all
# the script may not see a tag open or close inside its JSON: '<', '>' and '&' become JSON escapes
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _number(value: float | None) -> float | None:
    """A sort key JSON can carry (NaN is not JSON): None sorts last."""
    return None if value is None or not math.isfinite(value) else float(value)


def _versus_base_text(comparison: VersusBase | None) -> list[Any]:
    """``+3.7 [+0.5, +6.8] variant better · method (3 seeds), p 0.01`` as variant_help.md words it."""
    if comparison is None:
        return ["", None]
    bounds = ""
    if math.isfinite(comparison.low) and math.isfinite(comparison.high):
        bounds = f" [{comparison.low:+.1f}, {comparison.high:+.1f}]"
    text = (
        f"{comparison.difference:+.1f}{bounds} {comparison.verdict} · {comparison.level}, "
        f"p {comparison.p_value:.3g} ({comparison.test})"
    )
    return [text, _number(comparison.difference)]


def _interval_text(cell: Cell) -> str:
    interval = cell.interval
    return "" if interval is None else f"[{interval.low:.1f}, {interval.high:.1f}] {INTERVALS[interval.method]}"


def result_rows(tables: Sequence[Table]) -> list[dict[str, Any]]:
    """One row per measured cell of the tables (an unmeasured cell, ``–`` in Markdown, is no row), each
    column as [text, sort key]: the accuracy and its interval sort by the point estimate."""
    rows = []
    for table in tables:
        key = table.key
        for method in table.methods:
            for scheme in table.schemes:
                for attack, label in table.attacks:
                    cell = table.cells.get((method, scheme, attack))
                    if cell is None:
                        continue
                    comparison = table.versus_base.get((method, scheme, attack))
                    columns = {
                        "method": [method, method],
                        "data": [f"{key.dataset} → {key.eval_dataset}"] * 2,
                        "preset": [key.preset, key.preset],
                        "protocol": [key.protocol, key.protocol],
                        "epsilon": [format_epsilon(key.epsilon), _number(key.epsilon)],
                        "scheme": [scheme, scheme],
                        "attack": [label, label],
                        "accuracy": [cell_text(cell, False, "md", mark(comparison)), _number(cell.mean)],
                        "interval": [_interval_text(cell), _number(cell.mean)],
                        "seeds": [str(cell.n), cell.n],
                        "versus_base": _versus_base_text(comparison),
                        "flags": ["; ".join(cell.flags)] * 2,
                    }
                    rows.append({"cells": columns, "best": table.is_best(cell, scheme, attack)})
    return rows


def page_data(tables: Sequence[Table]) -> dict[str, Any]:
    """What the script reads: the columns, the filters and the rows."""
    headers = dict(COLUMNS)
    return {
        "columns": [{"key": key, "label": label} for key, label in COLUMNS],
        "filters": [{"key": key, "label": headers[key]} for key in FILTERS],
        "rows": result_rows(tables),
    }


def script_json(payload: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` (JSON escapes instead), no NaN."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False).translate(_SCRIPT_SAFE)


def _asset(name: str) -> str:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    if "</" in text and name.endswith(".js"):  # would end the inline script early
        raise ValueError(f"{name} contains '</'; write '<\\/' in the script")
    return text


def _code_spans(markdown: str) -> str:
    """Markdown line with `code` spans → escaped HTML with <code> (the index's provenance lines)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(markdown.removeprefix("- ")))


def _notes_section(tables: Sequence[Table]) -> str:
    """Each table's footnotes, as in results.md (what the ± is, what the marks answer, flagged cells)."""
    parts = []
    for table in tables:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in table_notes(table))
        parts.append(f"<h3>{html.escape(table.key.title())}</h3><ul>{items}</ul>")
    return "".join(parts) or "<p>No results.</p>"


def _files_section(artifacts: Sequence[Artifact], reports_dir: Path) -> str:
    """Links to the report's other files (Markdown, CSV, LaTeX, PDF), relative: they sit beside the page."""
    items = []
    for artifact in artifacts:
        if artifact.skipped:
            items.append(f"<li>{html.escape(artifact.title)}: <em>{html.escape(artifact.skipped)}</em></li>")
            continue
        links = " · ".join(
            f'<a href="{html.escape(path.relative_to(reports_dir).as_posix())}">'
            f"{html.escape(path.relative_to(reports_dir).as_posix())}</a>"
            for path in artifact.paths
        )
        items.append(f"<li>{html.escape(artifact.title)}: {links}</li>")
    return f"<ul>{''.join(items)}</ul>"


def render_page(
    tables: Sequence[Table],
    sanity: pd.DataFrame,
    artifacts: Sequence[Artifact],
    results: pd.DataFrame,
    results_csv: Path,
    runs_dir: Path,
    reports_dir: Path,
    order: MethodOrder,
) -> str:
    """The page's HTML. ``artifacts`` are the report's other outputs (figures embedded, files linked)."""
    banners = sorted({banner for preset in results["preset"].unique() if (banner := preset_banner(preset))})
    header = "".join(f'<p class="banner">{html.escape(banner)}</p>' for banner in banners)
    store = "".join(f"<li>{_code_spans(line)}</li>" for line in provenance(results, order))
    sections = [
        ("results", "Results (last-epoch accuracy, %)", _results_section(tables)),
        ("figures", "Figures", figures_section(artifacts)),
        ("sanity", "Sanity checks", sanity_section(sanity, order)),
        ("methods", "Methods: configuration, provenance, run ids", methods_section(results, runs_dir, order)),
        ("provenance", "Provenance of the whole store", f"<ul>{store}</ul>"),
        ("files", "Files of this report", _files_section(artifacts, reports_dir)),
    ]
    nav = " · ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{text}</section>' for key, title, text in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>acl-bench report</title><style>{_asset('page.css')}</style></head>\n"
        "<body><header><h1>acl-bench report</h1>"
        f"<p>Generated by <code>bench report</code> from <code>{html.escape(str(results_csv))}</code> "
        f"({len(results)} rows); a report only reads stored results.</p>{header}<nav>{nav}</nav></header>\n"
        f"<main>{body}</main>\n"
        f'<script type="application/json" id="report-data">{script_json(page_data(tables))}</script>\n'
        f"<script>{_asset('page.js')}</script>\n</body></html>\n"
    )


def _results_section(tables: Sequence[Table]) -> str:
    return (
        '<div id="filters" class="filters"></div>'
        '<p id="row-count" class="count"></p>'
        '<noscript><p class="banner">Sorting and filtering need JavaScript; results.md has the same table.'
        "</p></noscript>"
        '<div class="scroll"><table id="results-table"><thead><tr></tr></thead><tbody></tbody></table></div>'
        "<p>Click a column header to sort (again: reverse); the accuracy and its interval sort by the point "
        "estimate. Bold: best in its column of its table; ▲/▼: method verdict over seeds; †: suspect.</p>"
        f"<h3>Notes</h3>{_notes_section(tables)}"
    )


def write_html_report(
    tables: Sequence[Table],
    sanity: pd.DataFrame,
    artifacts: Sequence[Artifact],
    results: pd.DataFrame,
    results_csv: Path,
    runs_dir: Path,
    reports_dir: Path,
    order: MethodOrder,
) -> Artifact:
    """``index.html`` (atomically), listed in ``index.md`` like every other output."""
    page = render_page(tables, sanity, artifacts, results, results_csv, runs_dir, reports_dir, order)
    return Artifact("page", TITLE, [write_atomic(reports_dir / PAGE, page)])
