"""Results tables as text: Markdown, LaTeX (booktabs) and a long CSV, and the files that hold them.

Each cell reads ``mean ± std`` over seeds (the single value for one run), bold when best in its
column, ``†`` when its run flagged itself ``suspect``, and ``–`` where nothing was measured
(never filled in). Last-epoch accuracy is THE result; the best-on-test epoch gets its own files.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.atomic import write_atomic
from bench.report.common import (MISSING, SUSPECT_MARK, Artifact, MethodOrder, csv_text, label_method, latex_escape,
                                 preset_banner)
from bench.report.tables import BEST_EPOCH_METRIC, TABLE_ATTACKS, Cell, Table, build_tables

TABLE_CSV_COLUMNS = ("dataset", "eval_dataset", "preset", "epsilon", "method", "scheme", "attack", "column",
                     "mean", "std", "n", "best", "flags")


def cell_text(cell: Cell | None, best: bool, style: str = "md") -> str:
    """``mean ± std`` (or the single value), bold when best, ``†`` when suspect; ``–`` when missing."""
    if cell is None:
        return "--" if style == "tex" else MISSING
    plus_minus = " $\\pm$ " if style == "tex" else " ± "
    text = f"{cell.mean:.2f}" + (f"{plus_minus}{cell.std:.2f}" if cell.std is not None else "")
    if best:
        text = f"\\textbf{{{text}}}" if style == "tex" else f"**{text}**"
    if cell.suspect:
        text += "$^\\dagger$" if style == "tex" else SUSPECT_MARK
    return text


def _row_cells(table: Table, method: str, style: str) -> list[str]:
    cells = []
    for scheme in table.schemes:
        for attack, _ in TABLE_ATTACKS:
            cell = table.cells.get((method, scheme, attack))
            cells.append(cell_text(cell, cell is not None and table.is_best(cell, scheme, attack), style))
    return cells


def table_notes(table: Table) -> list[str]:
    """Footnotes: how cells were aggregated, and every flagged cell with its flags."""
    seeds = {method: max(cell.n for (m, _, _), cell in table.cells.items() if m == method) for method in table.methods}
    notes = ["Bold: best in its column. " + MISSING + ": not measured (never filled in)."]
    several = [f"{method} n={n}" for method, n in seeds.items() if n > 1]
    if several:
        notes.append("mean ± sample std over seeds (" + ", ".join(several) + "); other cells are single runs.")
    notes += _flag_notes(table)
    if any(label_method(method) != method for method in table.methods):
        notes.append("method [hash]: the method was run with several configurations; one row each "
                     "(config.json of its runs in results/runs/ has the settings).")
    n_eval = sorted(table.rows["n_eval"].dropna().astype(int).unique())
    if n_eval:
        notes.append("evaluated on n_eval = " + ", ".join(map(str, n_eval)) + " test images.")
    return notes


def _flag_notes(table: Table) -> list[str]:
    """One line per (method, scheme, tags): suspect cells get the marker, other flags are listed plainly."""
    grouped: dict[tuple[str, str, bool, str], list[str]] = {}
    for method in table.methods:
        for scheme in table.schemes:
            for attack, label in TABLE_ATTACKS:
                cell = table.cells.get((method, scheme, attack))
                for suspect in (True, False):
                    chosen = [tag for tag in (cell.flags if cell else ()) if tag.startswith("suspect") == suspect]
                    if chosen:
                        grouped.setdefault((method, scheme, suspect, "; ".join(chosen)), []).append(label)
    return [f"{SUSPECT_MARK + ' ' if suspect else 'flags: '}{method} {scheme} {', '.join(labels)}: {tags}"
            for (method, scheme, suspect, tags), labels in grouped.items()]


def table_markdown(table: Table, heading: str = "") -> str:
    """One table as Markdown: title with ε, banner for non-paper presets, cells, footnotes."""
    header = ["Method", *(f"{scheme} {label}" for scheme in table.schemes for _, label in TABLE_ATTACKS)]
    lines = [f"### {heading}{table.key.title()}", ""]
    banner = preset_banner(table.key.preset)
    if banner:
        lines += [f"> **{banner}**", ""]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in table.methods:
        lines.append("| " + " | ".join([method.replace("|", "\\|"), *_row_cells(table, method, "md")]) + " |")
    lines += [""] + [f"- {note}" for note in table_notes(table)] + [""]
    return "\n".join(lines)


def table_latex(table: Table, heading: str = "") -> str:
    """One booktabs table; the caption carries data, preset, ε and the non-paper banner."""
    banner = preset_banner(table.key.preset)
    caption = latex_escape(heading + table.key.title() + (f". {banner}." if banner else ""))
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
             "\\begin{tabular}{l" + "ccc" * len(table.schemes) + "}", "\\toprule",
             " & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{scheme}}}" for scheme in table.schemes) + " \\\\",
             " ".join(f"\\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(table.schemes))),
             "Method & " + " & ".join(label for _ in table.schemes for _, label in TABLE_ATTACKS) + " \\\\",
             "\\midrule"]
    for method in table.methods:
        lines.append(" & ".join([latex_escape(method), *_row_cells(table, method, "tex")]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\smallskip", "{\\footnotesize"]
    lines += [" \\\\\n".join(latex_escape(note) for note in table_notes(table))]
    lines += ["}", "\\end{table}", ""]
    return "\n".join(lines)


def table_csv_rows(table: Table) -> list[dict[str, Any]]:
    """The table in long form, one row per method × scheme × attack; a missing cell has an empty mean."""
    out = []
    for method in table.methods:
        for scheme in table.schemes:
            for attack, label in TABLE_ATTACKS:
                cell = table.cells.get((method, scheme, attack))
                out.append({"dataset": table.key.dataset, "eval_dataset": table.key.eval_dataset,
                            "preset": table.key.preset,
                            "epsilon": "" if table.key.epsilon is None else table.key.epsilon,
                            "method": method, "scheme": scheme, "attack": attack, "column": f"{scheme} {label}",
                            "mean": "" if cell is None else round(cell.mean, 4),
                            "std": "" if cell is None or cell.std is None else round(cell.std, 4),
                            "n": 0 if cell is None else cell.n,
                            "best": "" if cell is None else int(table.is_best(cell, scheme, attack)),
                            "flags": "" if cell is None else ";".join(cell.suspect)})
    return out


def write_tables(tables: Sequence[Table], out_dir: Path, stem: str, heading: str, preamble: str) -> list[Path]:
    """All tables of one metric into ``stem.md``, ``stem.csv`` and ``stem.tex``."""
    markdown = [f"# {preamble}", ""] + [table_markdown(table, heading) for table in tables]
    if not tables:
        markdown.append("No rows for this metric.")
    latex = ["% requires \\usepackage{booktabs}", *(table_latex(table, heading) for table in tables)]
    rows = [row for table in tables for row in table_csv_rows(table)]
    return [write_atomic(out_dir / f"{stem}.md", "\n".join(markdown) + "\n"),
            write_atomic(out_dir / f"{stem}.csv", csv_text(rows, TABLE_CSV_COLUMNS)),
            write_atomic(out_dir / f"{stem}.tex", "\n".join(latex))]


def _other_attacks_note(results: pd.DataFrame) -> str:
    shown = [attack for attack, _ in TABLE_ATTACKS]
    others = sorted(results.loc[~results["attack"].isin(shown), "attack"].unique())
    return f" Other attacks in the store (not in these tables): {', '.join(others)}." if others else ""


def table_artifacts(results: pd.DataFrame, reports_dir: Path, order: MethodOrder) -> tuple[list[Table], list[Artifact]]:
    """Main (last-epoch) tables and the separate best-epoch tables."""
    tables = build_tables(results, order, "accuracy")
    main = write_tables(tables, reports_dir, "results", "",
                        "Results: last-epoch accuracy (%)." + _other_attacks_note(results))
    artifacts = [Artifact("table", "Results (last-epoch accuracy)", main)]
    best = build_tables(results, order, BEST_EPOCH_METRIC)
    if best:
        paths = write_tables(best, reports_dir, "results_best_epoch", "Best-on-test epoch — ",
                             "Best-on-test-epoch accuracy (%): labelled extra as the released scripts print it; "
                             "chosen on the test set, not the result")
        artifacts.append(Artifact("table", "Best-on-test epoch (labelled extra, not the result)", paths))
    else:
        artifacts.append(Artifact("table", "Best-on-test epoch table", [], f"no `{BEST_EPOCH_METRIC}` rows"))
    return tables, artifacts
