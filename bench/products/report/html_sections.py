"""The static sections of ``index.html`` (``html``): figures, the sanity summary, and per method its config,
provenance and run ids. Everything read from the store or the run directories is escaped here.

Figures are the PNGs the report just wrote, embedded as base64 ``data:`` URIs (the PDFs stay linked
files). A method's configuration is its runs' ``config.json`` (one per configuration hash, the
``environment`` block shown as provenance instead); a missing or unreadable one is said so on the page
and, when unreadable, in a warning line, never left out silently.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.engine import progress
from bench.products.report.common import FIGURES_NOT_DRAWN, MISSING, Artifact, MethodOrder
from bench.store.results import RunDir

# (column of results.csv, header) of a run's provenance row, then from its config.json's environment
RUN_COLUMNS = (
    ("run_id", "Run id"),
    ("seed", "Seed"),
    ("config_hash", "Config hash"),
    ("preset", "Preset"),
    ("dataset", "Dataset"),
    ("device", "Device"),
    ("timestamp", "Finished"),
)
ENVIRONMENT = (("python", "Python"), ("platform", "Platform"), ("gpu", "GPU"))


def _escape(value: Any) -> str:
    text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
    return html.escape(text) if text else MISSING


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    head = "".join(f'<th scope="col">{html.escape(label)}</th>' for label in header)
    body = "".join("<tr>" + "".join(f"<td>{_escape(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figures_section(artifacts: Sequence[Artifact]) -> str:
    """Each figure of the report: its PNG inline, its title, and a link to its PDF."""
    parts = []
    for artifact in artifacts:
        if artifact.kind != "figure" or artifact.skipped:
            continue
        png = next((path for path in artifact.paths if path.suffix == ".png"), None)
        if png is None:
            continue
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        others = " · ".join(
            f'<a href="figures/{html.escape(path.name)}">{html.escape(path.suffix.lstrip("."))}</a>'
            for path in artifact.paths
            if path != png
        )
        parts.append(
            f'<figure><img alt="{html.escape(artifact.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(artifact.title)}{' · ' + others if others else ''}</figcaption></figure>"
        )
    if parts:
        return "".join(parts)
    if any(artifact.skipped == FIGURES_NOT_DRAWN for artifact in artifacts):
        return f"<p>Figures {FIGURES_NOT_DRAWN}.</p>"
    return "<p>No figures (no data for any).</p>"


def sanity_section(rows: pd.DataFrame, order: MethodOrder) -> str:
    """How many checks ran and failed, the failed ones listed, every check in a collapsed table."""
    if rows.empty:
        return "<p>No sanity checks recorded (no sanity_&lt;scheme&gt;.json in the run directories).</p>"
    ranked = rows.assign(rank=rows["method"].map(lambda method: order.key(method)[0]))
    ranked = ranked.sort_values(["rank", "method", "scheme", "check"], kind="stable")
    failed = ranked[~ranked["passed"]]
    evaluations = len(rows[["run_id", "scheme"]].drop_duplicates())
    summary = (
        f'<p class="{"banner" if len(failed) else "ok"}" id="sanity-summary">{len(rows)} checks over '
        f"{evaluations} evaluations; {len(failed)} failed (those rows carry a <code>suspect:&lt;check&gt;</code> "
        "flag and a † in the table).</p>"
    )
    header = ("Method", "Scheme", "Check", "Passed", "Numbers")
    listed = [
        (row.method, row.scheme, row.check, "yes" if row.passed else "NO", row.detail) for row in ranked.itertuples()
    ]
    if len(failed):
        summary += "<h3>Failed checks</h3>" + _table(header, [row for row in listed if row[3] == "NO"], "sanity failed")
    return summary + f"<details><summary>All {len(rows)} checks</summary>{_table(header, listed, 'sanity')}</details>"


def read_config(runs_dir: Path, run_id: str) -> tuple[dict[str, Any] | None, str]:
    """(config.json of a run, '') or (None, why not): missing, or unreadable (then a warning line too)."""
    path, name = RunDir(runs_dir / run_id).config, RunDir.config.name
    if not path.is_file():
        return None, f"no {name} in runs/{run_id}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        progress.log(f"warning: {path} is unreadable ({type(error).__name__}); index.html says so")
        return None, f"runs/{run_id}/{name} is unreadable ({type(error).__name__})"
    if not isinstance(config, dict):
        return None, f"runs/{run_id}/{name} is not a JSON object"
    return config, ""


def _runs_of(results: pd.DataFrame, method: str) -> pd.DataFrame:
    """One row per run of the method (its latest stored row), in run id order."""
    rows = results[results["method"] == method].sort_values("timestamp", kind="stable")
    return rows.drop_duplicates("run_id", keep="last").sort_values("run_id", kind="stable")


def _commit(code_version: Any) -> str:
    """The git commit of a code version ``0.1.0+<commit>[-dirty]`` (what ``code_version()`` records)."""
    text = "" if pd.isna(code_version) else str(code_version)
    return text.partition("+")[2] or MISSING


def _method_details(method: str, results: pd.DataFrame, runs_dir: Path) -> str:
    runs = _runs_of(results, method)
    configs = {run.run_id: read_config(runs_dir, run.run_id) for run in runs.itertuples()}
    header = [label for _, label in RUN_COLUMNS] + ["Git commit", "Code version", "Torch"]
    header += [label for _, label in ENVIRONMENT]
    table = []
    for run in runs.to_dict("records"):
        environment = (configs[run["run_id"]][0] or {}).get("environment") or {}
        table.append(
            [run[column] for column, _ in RUN_COLUMNS]
            + [_commit(run["code_version"]), run["code_version"], run["torch_version"]]
            + [environment.get(key) if isinstance(environment, dict) else None for key, _ in ENVIRONMENT]
        )
    settings = []
    for config_hash, group in runs.groupby("config_hash", sort=True):
        run_ids = list(group["run_id"])
        config, why = next(((c, w) for c, w in map(configs.get, run_ids) if c is not None), configs[run_ids[0]])
        shown = {key: value for key, value in (config or {}).items() if key != "environment"}
        text = json.dumps(shown, indent=2, sort_keys=True, default=str) if config is not None else why
        settings.append(
            f"<h4>Configuration {html.escape(str(config_hash))} (runs {html.escape(', '.join(run_ids))})</h4>"
            f'<pre class="config">{html.escape(text)}</pre>'
        )
    seeds = ", ".join(map(str, sorted(runs["seed"].dropna().astype(int).unique()))) or MISSING
    summary = (
        f"<summary><strong>{html.escape(method)}</strong>: {len(runs)} run(s), seeds {seeds}; "
        f"config {html.escape(', '.join(sorted(map(str, runs['config_hash'].unique()))))}</summary>"
    )
    runs_table = _table(header, table, "runs")
    opening = f'<details class="method" data-method="{html.escape(method)}">'
    return f"{opening}{summary}<h4>Runs</h4>{runs_table}{''.join(settings)}</details>"


def methods_section(results: pd.DataFrame, runs_dir: Path, order: MethodOrder) -> str:
    """Per method, collapsed: its runs (ids, seeds, commit, versions, device) and each configuration's settings."""
    methods = order.sort(results["method"].astype(str).unique())
    return "".join(_method_details(method, results, runs_dir) for method in methods) or "<p>No runs.</p>"
