"""Results tables as text: Markdown, LaTeX (booktabs) and a long CSV, and the files that hold them.

Each cell reads ``mean ±h``, h the half-width of its 95 % interval (``Cell.interval``: Wilson over
the test images for one run, Student-t over seeds for several; the larger side when asymmetric),
bold when best in its column, ``†`` when its run flagged itself ``suspect``, and ``–`` where
nothing was measured (never filled in). The CSV keeps the std, the interval's bounds and every
seed's value. Last-epoch accuracy is THE result; the best-on-test epoch gets its own files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.products.report.common import (
    MISSING,
    SUSPECT_MARK,
    Artifact,
    MethodOrder,
    csv_text,
    label_method,
    latex_escape,
    preset_banner,
)
from bench.products.report.significance import (
    BETTER,
    VARIANT_HELP_COLUMNS,
    WORSE,
    compare_with_bases,
    mark,
    variant_help_markdown,
    variant_help_rows,
)
from bench.products.report.tables import BEST_EPOCH_METRIC, TABLE_ATTACKS, Cell, Table, build_tables
from bench.store.atomic import write_atomic

TABLE_CSV_COLUMNS = (
    "dataset",
    "eval_dataset",
    "preset",
    "protocol",
    "epsilon",
    "method",
    "scheme",
    "attack",
    "column",
    "mean",
    "std",
    "n",
    "low",
    "high",
    "interval",
    "n_eval",
    "seeds",
    "values",
    "best",
    "flags",
    "vs_base_level",
    "vs_base_difference",
    "vs_base_p",
    "vs_base_test",
    "vs_base_verdict",
)
VERSUS_BASE_COLUMNS = TABLE_CSV_COLUMNS[-5:]
INTERVAL_NAMES = {
    "wilson": "Wilson score interval over the n_eval test images (one run)",
    "t": "Student-t interval of the mean over seeds",
}


def cell_text(cell: Cell | None, best: bool, style: str = "md", significance: str = "") -> str:
    """``mean ±h`` (h: half-width of the 95 % interval; the mean alone without one), bold when best,
    ``▲``/``▼`` when the method-level test over seeds finds the variant better/worse than its base method, ``†`` when
    suspect; ``–`` when missing."""
    if cell is None:
        return "--" if style == "tex" else MISSING
    plus_minus = " $\\pm$" if style == "tex" else " ±"
    interval = cell.interval
    text = f"{cell.mean:.1f}" + (f"{plus_minus}{interval.half_width(cell.mean):.1f}" if interval else "")
    if best:
        text = f"\\textbf{{{text}}}" if style == "tex" else f"**{text}**"
    if significance:
        text += {BETTER: "$^\\uparrow$", WORSE: "$^\\downarrow$"}[significance] if style == "tex" else significance
    if cell.suspect:
        text += "$^\\dagger$" if style == "tex" else SUSPECT_MARK
    return text


def _row_cells(table: Table, method: str, style: str) -> list[str]:
    cells = []
    for scheme in table.schemes:
        for attack, _ in table.attacks:
            cell = table.cells.get((method, scheme, attack))
            significance = mark(table.versus_base.get((method, scheme, attack)))
            cells.append(cell_text(cell, cell is not None and table.is_best(cell, scheme, attack), style, significance))
    return cells


def table_notes(table: Table) -> list[str]:
    """Footnotes: how cells were aggregated, and every flagged cell with its flags."""
    seeds = {method: max(cell.n for (m, _, _), cell in table.cells.items() if m == method) for method in table.methods}
    notes = ["Bold: best in its column. " + MISSING + ": not measured (never filled in)."]
    notes.append(interval_note(table.cells.values()))
    notes += versus_base_notes(table)
    several = [f"{method} n={n}" for method, n in seeds.items() if n > 1]
    if several:
        notes.append(
            "mean over seeds (" + ", ".join(several) + "); other cells are single runs. "
            "The CSV has each seed's value and the sample std."
        )
    notes += _flag_notes(table)
    if any(label_method(method) != method for method in table.methods):
        notes.append(
            "method [hash]: the method was run with several configurations; one row each "
            "(config.json of its runs in results/runs/ has the settings)."
        )
    n_eval = sorted(table.rows["n_eval"].dropna().astype(int).unique())
    if n_eval:
        notes.append("evaluated on n_eval = " + ", ".join(map(str, n_eval)) + " test images.")
    return notes


def versus_base_notes(table: Table) -> list[str]:
    """What the variant-vs-base comparisons of this table answer: ▲/▼ only from a method-level test."""
    levels = [comparison.is_method_level for comparison in table.versus_base.values()]
    notes = []
    if any(levels):
        notes.append(
            f"{BETTER}/{WORSE}: method verdict: the variant method is significantly better/worse than its base "
            "method in that column over the seeds both have (α = 0.05; random-effects test over the paired "
            "per-seed differences, seeds as the unit); no mark: no detectable difference, or no method-level "
            "test possible. variant_help.md has each test and the seeds a verdict would need."
        )
    if not all(levels):
        notes.append(
            "single runs (one seed): no method verdict and no mark. The exact McNemar test on their images "
            "(variant_help.md, level 'classifiers (one seed)') compares two trained classifiers, which "
            "another seed can overturn; a method verdict needs >= 2 seeds of each (bench run --seeds 0 1 2)."
        )
    return notes


def marks_caption(table: Table) -> str:
    """The LaTeX caption's sentence on which question its marks answer ('' without comparisons)."""
    levels = {comparison.is_method_level for comparison in table.versus_base.values()}
    if not levels:
        return ""
    if levels == {False}:
        return " No method verdict: one seed per method compares two trained classifiers, not the methods."
    return (
        f" {BETTER}/{WORSE}: the variant method is significantly better/worse than its base method over seeds "
        "(method level, random-effects test, α = 0.05); single runs get no mark."
    )


def interval_note(cells) -> str:
    """What the ± of these cells is: the intervals that occur, named."""
    kinds = sorted({interval.method for cell in cells if (interval := cell.interval) is not None})
    if not kinds:
        return "no interval: the number of test images (n_eval) is unknown."
    names = "; ".join(INTERVAL_NAMES[kind] for kind in kinds)
    return f"±: half-width of the 95 % interval (the larger side): {names}."


def _flag_notes(table: Table) -> list[str]:
    """One line per (method, scheme, tags): suspect cells get the marker, other flags are listed plainly."""
    grouped: dict[tuple[str, str, bool, str], list[str]] = {}
    for method in table.methods:
        for scheme in table.schemes:
            for attack, label in table.attacks:
                cell = table.cells.get((method, scheme, attack))
                for suspect in (True, False):
                    chosen = [tag for tag in (cell.flags if cell else ()) if tag.startswith("suspect") == suspect]
                    if chosen:
                        grouped.setdefault((method, scheme, suspect, "; ".join(chosen)), []).append(label)
    return [
        f"{SUSPECT_MARK + ' ' if suspect else 'flags: '}{method} {scheme} {', '.join(labels)}: {tags}"
        for (method, scheme, suspect, tags), labels in grouped.items()
    ]


def table_markdown(table: Table, heading: str = "") -> str:
    """One table as Markdown: title with protocol and ε, banner for non-paper presets, cells, footnotes
    (every flag of a cell is listed, e.g. where an AdvCL run's pseudo-labels came from)."""
    header = ["Method", *(f"{scheme} {label}" for scheme in table.schemes for _, label in table.attacks)]
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
    """One booktabs table; the caption carries data, preset, protocol, ε and the non-paper banner."""
    banner = preset_banner(table.key.preset)
    caption = latex_escape(heading + table.key.title() + (f". {banner}." if banner else "") + marks_caption(table))
    columns = len(table.attacks)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{caption}}}",
        "\\begin{tabular}{l" + "c" * columns * len(table.schemes) + "}",
        "\\toprule",
        " & " + " & ".join(f"\\multicolumn{{{columns}}}{{c}}{{{scheme}}}" for scheme in table.schemes) + " \\\\",
        " ".join(f"\\cmidrule(lr){{{2 + columns * i}-{1 + columns * (i + 1)}}}" for i in range(len(table.schemes))),
        "Method & " + " & ".join(label for _ in table.schemes for _, label in table.attacks) + " \\\\",
        "\\midrule",
    ]
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
            for attack, label in table.attacks:
                cell = table.cells.get((method, scheme, attack))
                out.append(
                    {
                        "dataset": table.key.dataset,
                        "eval_dataset": table.key.eval_dataset,
                        "preset": table.key.preset,
                        "protocol": table.key.protocol,
                        "epsilon": "" if table.key.epsilon is None else table.key.epsilon,
                        "method": method,
                        "scheme": scheme,
                        "attack": attack,
                        "column": f"{scheme} {label}",
                        "mean": "" if cell is None else round(cell.mean, 4),
                        "std": "" if cell is None or cell.std is None else round(cell.std, 4),
                        "n": 0 if cell is None else cell.n,
                        **interval_columns(cell),
                        "best": "" if cell is None else int(table.is_best(cell, scheme, attack)),
                        "flags": "" if cell is None else ";".join(cell.suspect),
                        **versus_base_columns(table, (method, scheme, attack)),
                    }
                )
    return out


def interval_columns(cell: Cell | None) -> dict[str, Any]:
    """The CSV's interval bounds and name, n_eval, and the per-seed values (``;``-joined, seed order as stored)."""
    interval = None if cell is None else cell.interval
    return {
        "low": "" if interval is None else round(interval.low, 4),
        "high": "" if interval is None else round(interval.high, 4),
        "interval": "" if interval is None else interval.method,
        "n_eval": "" if cell is None or cell.n_eval is None else cell.n_eval,
        "seeds": "" if cell is None else ";".join(cell.seeds),
        "values": "" if cell is None else ";".join(f"{value:g}" for value in cell.values),
    }


def versus_base_columns(table: Table, key: tuple[str, str, str]) -> dict[str, Any]:
    """The CSV's variant-vs-base test of one cell (empty where none is defined)."""
    comparison = table.versus_base.get(key)
    if comparison is None:
        return dict.fromkeys(VERSUS_BASE_COLUMNS, "")
    return {
        "vs_base_level": comparison.level,
        "vs_base_difference": round(comparison.difference, 4),
        "vs_base_p": f"{comparison.p_value:.4g}",
        "vs_base_test": comparison.test,
        "vs_base_verdict": comparison.verdict,
    }


def write_tables(tables: Sequence[Table], out_dir: Path, stem: str, heading: str, preamble: str) -> list[Path]:
    """All tables of one metric into ``stem.md``, ``stem.csv`` and ``stem.tex``."""
    markdown = [f"# {preamble}", ""] + [table_markdown(table, heading) for table in tables]
    if not tables:
        markdown.append("No rows for this metric.")
    latex = ["% requires \\usepackage{booktabs}", *(table_latex(table, heading) for table in tables)]
    rows = [row for table in tables for row in table_csv_rows(table)]
    return [
        write_atomic(out_dir / f"{stem}.md", "\n".join(markdown) + "\n"),
        write_atomic(out_dir / f"{stem}.csv", csv_text(rows, TABLE_CSV_COLUMNS)),
        write_atomic(out_dir / f"{stem}.tex", "\n".join(latex)),
    ]


def _other_attacks_note(results: pd.DataFrame) -> str:
    shown = [attack for attack, _ in TABLE_ATTACKS]
    others = sorted(results.loc[~results["attack"].isin(shown), "attack"].unique())
    corruptions = [attack for attack in others if attack.startswith("corruption")]
    others = [attack for attack in others if not attack.startswith("corruption")]
    others += ["common corruptions (corruptions.md)"] if corruptions else []
    return f" Other attacks in the store (not in these tables): {', '.join(others)}." if others else ""


def variant_help_artifact(tables: list[Table], reports_dir: Path) -> Artifact:
    """``variant_help.{md,csv}``: every defined variant-vs-base comparison, or why there is none."""
    title = "Does the variant help? (method level over seeds; classifier level for single runs)"
    rows = variant_help_rows(tables)
    if not rows:
        return Artifact(
            "table",
            title,
            [],
            "no variant with its base method in a table where a paired test is "
            "defined (>= 2 shared seeds: method level; per-image records of single runs: classifier level)",
        )
    paths = [
        write_atomic(reports_dir / "variant_help.md", variant_help_markdown(rows)),
        write_atomic(reports_dir / "variant_help.csv", csv_text(rows, VARIANT_HELP_COLUMNS)),
    ]
    return Artifact("table", title, paths)


def table_artifacts(
    results: pd.DataFrame, reports_dir: Path, order: MethodOrder, runs_dir: Path | None = None
) -> tuple[list[Table], list[Artifact]]:
    """Main (last-epoch) tables, with each variant's paired test against its base, and the separate
    best-epoch tables (no test: the records are of the last epoch)."""
    tables = build_tables(results, order, "accuracy")
    for table in tables:
        table.versus_base = compare_with_bases(table, runs_dir)
    main = write_tables(
        tables, reports_dir, "results", "", "Results: last-epoch accuracy (%)." + _other_attacks_note(results)
    )
    artifacts = [Artifact("table", "Results (last-epoch accuracy)", main)]
    artifacts.append(variant_help_artifact(tables, reports_dir))
    best = build_tables(results, order, BEST_EPOCH_METRIC)
    if best:
        paths = write_tables(
            best,
            reports_dir,
            "results_best_epoch",
            "Best-on-test epoch — ",
            "Best-on-test-epoch accuracy (%): labelled extra as the released scripts print it; "
            "chosen on the test set, not the result",
        )
        artifacts.append(Artifact("table", "Best-on-test epoch (labelled extra, not the result)", paths))
    else:
        artifacts.append(Artifact("table", "Best-on-test epoch table", [], f"no `{BEST_EPOCH_METRIC}` rows"))
    return tables, artifacts
