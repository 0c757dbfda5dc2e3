"""The sanity report: every check of every evaluation (``RunDir.sanity_files``), passed or failed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.engine import progress
from bench.products.report.common import Artifact, MethodOrder, csv_text
from bench.store.atomic import write_atomic
from bench.store.results import RunDir

SANITY_COLUMNS = ("run_id", "method", "scheme", "check", "passed", "detail")


def sanity_rows(results: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Every recorded sanity check of the runs in the results. An unreadable file is not dropped
    silently: it becomes one failed check (``file``) naming it, and one warning line."""
    runs = results.drop_duplicates("run_id").set_index("run_id")["method"].sort_index()
    rows = []
    for run_id, method in runs.items():
        for scheme, path in RunDir(runs_dir / run_id).sanity_files().items():
            row = {"run_id": run_id, "method": method, "scheme": scheme}
            try:
                checks = read_checks(path)
            except ValueError as error:
                progress.log(f"warning: {error}; listed as a failed check in sanity.md")
                rows.append({**row, "check": "file", "passed": False, "detail": str(error)})
                continue
            rows += [
                {**row, "check": name, "passed": bool(check.get("passed")), "detail": check.get("detail", "")}
                for name, check in sorted(checks.items())
            ]
    return pd.DataFrame(rows, columns=list(SANITY_COLUMNS))


def read_checks(path: Path) -> dict[str, dict]:
    """check name -> {passed, detail} from a sanity file; ``ValueError`` naming the file when it cannot be read."""
    try:
        checks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"sanity file {path} is unreadable ({type(error).__name__})") from None
    if not isinstance(checks, dict) or not all(isinstance(check, dict) for check in checks.values()):
        raise ValueError(f"sanity file {path} is unreadable (not a JSON object of checks)")
    return checks


def write_sanity_report(rows: pd.DataFrame, reports_dir: Path, order: MethodOrder) -> Artifact:
    """``sanity.md`` / ``sanity.csv``: each check of each evaluation (``sanity_rows``, read once per report and
    shared with index.html), passed or failed, with its numbers."""
    title = "Sanity checks of every evaluation (passed and failed)"
    if rows.empty:
        return Artifact("table", title, [], "no sanity_<scheme>.json in the run directories")
    failed = int((~rows["passed"]).sum())
    evaluations = len(rows[["run_id", "scheme"]].drop_duplicates())
    lines = [
        "# Sanity checks",
        "",
        f"{len(rows)} checks over {evaluations} evaluations; "
        f"{failed} failed (those rows carry a `suspect:<check>` flag in results.csv).",
        "",
        "| Method | Scheme | Check | Passed | Numbers |",
        "|---|---|---|---|---|",
    ]
    ranked = rows.assign(rank=rows["method"].map(lambda method: order.key(method)[0]))
    for row in ranked.sort_values(["rank", "method", "scheme", "check"], kind="stable").itertuples():
        mark = "yes" if row.passed else "**NO**"
        detail = str(row.detail).replace("|", "\\|")
        lines.append(f"| {row.method} | {row.scheme} | {row.check} | {mark} | {detail} |")
    paths = [
        write_atomic(reports_dir / "sanity.md", "\n".join(lines) + "\n"),
        write_atomic(reports_dir / "sanity.csv", csv_text(rows.to_dict("records"), SANITY_COLUMNS)),
    ]
    return Artifact("table", title, paths)
