"""Tables and figures from the results store only (docs/design.md §5): a report never trains.

``results/results.csv`` holds one row per measured number (``bench.store.rows.load`` reads it into a
typed DataFrame). From it, under the reports directory:

- ``results.{md,csv,tex}``: per (dataset, eval_dataset, preset, ε), methods × {SLF, ALF, AFF} ×
  {SA, PGD-20, AA}, last-epoch accuracy (THE result), mean ± its 95 % interval (``tables``,
  ``render``); ``results_best_epoch.*``: the best-on-test epoch, kept apart;
- ``figures/``: robust vs clean, bars with per-seed dots (``figures``), robust accuracy vs compute
  (``compute``), pretraining loss and accuracy vs ε (``curves``), PNG + PDF;
- ``variant_help.{md,csv}``: each variant's paired test against its base method (``significance``);
- ``corruptions.{md,csv}``: common-corruption accuracy against severity (``corruptions``);
- ``sanity.{md,csv}``: every sanity check of every evaluation (``sanity``);
- ``paper_table1.{md,csv,tex}``: the A-InfoNCE Table 1 layout beside published numbers (``paper``,
  ``reference``);
- ``index.html``: all of it in one self-contained page that opens from disk: the results table sortable and
  filterable, the figures inline, the sanity summary, per method its config, provenance and run ids (``html``);
- ``index.md``: a table of contents, one line per table or figure, provenance once (``index``).

The method order is the caller's (``bench report`` passes the registry's, plugins included).
Every file is written to a temp file in its directory and renamed over the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.errors import ConfigError, did_you_mean
from bench.products.report.common import FIGURES_NOT_DRAWN, Artifact, MethodOrder
from bench.products.report.compute import plot_robustness_vs_compute
from bench.products.report.corruptions import write_corruption_report
from bench.products.report.curves import epsilon_series, loss_curve_artifacts, plot_epsilon_curves
from bench.products.report.figures import plot_bars, plot_robust_vs_clean
from bench.products.report.html import write_html_report
from bench.products.report.index import write_index
from bench.products.report.paper import PAPER_DATASETS, write_paper_tables
from bench.products.report.reference import UNSPECIFIED_AINFONCE, load_reference
from bench.products.report.render import table_artifacts
from bench.products.report.sanity import sanity_rows, write_sanity_report
from bench.store.rows import load

__all__ = [
    "UNSPECIFIED_AINFONCE",
    "MethodOrder",
    "epsilon_series",
    "load_reference",
    "write_paper_tables",
    "write_reports",
]


def write_reports(
    results_csv: str | Path,
    reports_dir: str | Path,
    runs_dir: str | Path,
    reference_dir: str | Path | None,
    paper: bool = False,
    curve_methods: Sequence[str] | None = None,
    method_order: Sequence[str] = (),
    figures: bool = True,
) -> list[Path]:
    """Write every table, figure, ``index.html`` and ``index.md`` from the stored results; returns the paths written.

    ``method_order`` orders rows, legends and lists (methods not in it follow alphabetically). The
    paper table is written when ``paper`` is set or when the results hold CIFAR-10/100 rows. Without
    ``figures`` (``--no-figures``) no figure is drawn: they are most of a report's time (about 0.6 s each).
    """
    results = load(results_csv)
    stored = sorted(results["method"].unique())
    for name in curve_methods or ():
        if name not in stored:
            hint = did_you_mean(name, stored)
            raise ConfigError(f"--curve-methods {name!r} is invalid{hint}: allowed methods in {results_csv}: {stored}")
    order = MethodOrder(tuple(method_order))
    reports_dir, figures_dir = Path(reports_dir), Path(reports_dir) / "figures"
    tables, artifacts = table_artifacts(results, reports_dir, order, Path(runs_dir))
    if figures:
        for table in tables:
            artifacts += [
                plot_robust_vs_clean(table, figures_dir, order),
                plot_bars(table, figures_dir),
                plot_robustness_vs_compute(table, Path(runs_dir), figures_dir, order),
            ]
        artifacts += loss_curve_artifacts(tables, Path(runs_dir), figures_dir, order)
    artifacts += write_corruption_report(results, reports_dir, order, figures_dir if figures else None)
    sanity = sanity_rows(results, Path(runs_dir))
    artifacts.append(write_sanity_report(sanity, reports_dir, order))
    if figures:
        artifacts += plot_epsilon_curves(results, figures_dir, order, curve_methods)
    else:
        artifacts.append(Artifact("figure", "Figures", [], FIGURES_NOT_DRAWN))
    if paper or results["dataset"].isin([dataset for dataset, _ in PAPER_DATASETS]).any():
        artifacts.append(
            Artifact(
                "paper",
                "Paper table (A-InfoNCE Table 1 layout): ours, reference, Δ",
                write_paper_tables(results, reference_dir, reports_dir, order),
            )
        )
    artifacts.append(
        write_html_report(tables, sanity, artifacts, results, Path(results_csv), Path(runs_dir), reports_dir, order)
    )
    index = write_index(artifacts, reports_dir, Path(results_csv), results, order)
    return [path for artifact in artifacts for path in artifact.paths] + [index]
