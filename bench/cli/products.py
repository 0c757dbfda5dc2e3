"""The product commands, ``bench report``, ``compare`` and ``export``, and the report every run command
writes at its end.

Apart from ``bench.cli.commands`` because they need the report and statistics stack (pandas, scipy,
matplotlib; about 1.5 s of start-up): a run that writes no report (``--no-report``, ``bench pretrain``,
torchrun's ranks, a sweep's jobs) imports none of it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.config import ConfigError, check_directory
from bench.engine import progress
from bench.methodkit import registry
from bench.products.compare import compare_command
from bench.products.export import export_run, sidecar_path
from bench.products.report import write_reports
from bench.runs.collect import refresh_index


def write_report(
    dirs: tuple[Path, Path], paper: bool, quiet: bool, curve_methods: list[str] | None = None, figures: bool = True
) -> list[Path]:
    """Write the report in the registry's method order (plugins included): methods without adversarial
    views (the non-adversarial anchor) first, then each base method followed by its A-InfoNCE variants."""

    methods = registry.available()
    of = {name: registry.spelling(name).base for name in methods}  # the listed name each is a variant of
    bases = sorted((name for name in methods if not of[name]), key=lambda name: methods[name].variant.adversarial_views)
    order = [name for base in bases for name in (base, *(n for n in methods if of[n] == base))]
    results_dir, reports_dir = dirs
    check_directory("reports_dir", reports_dir)
    written = write_reports(
        results_dir / "results.csv",
        reports_dir,
        results_dir / "runs",
        results_dir / "reference",
        paper=paper,
        curve_methods=curve_methods,
        method_order=order + [name for name in methods if name not in order],
        figures=figures,
    )
    index = next((path for path in written if Path(path).name == "index.md"), reports_dir / "index.md")
    if not quiet:
        table = reports_dir / "results.md"
        if table.exists():
            print(table.read_text())
    progress.log(f"report: {index}")
    return [Path(path) for path in written]


def cmd_report(args: argparse.Namespace) -> int:
    methods = _listed(args.curve_methods)
    if methods and args.no_figures:  # it selects what a figure draws
        raise ConfigError("--curve-methods is invalid with --no-figures: allowed one of the two")
    refresh_index(Path(args.results_dir))  # a row-cut or header-only index is rebuilt, not reported
    written = write_report(
        (Path(args.results_dir), Path(args.reports_dir)),
        paper=args.paper,
        quiet=args.quiet or args.json,
        curve_methods=methods or None,
        figures=not args.no_figures,
    )
    if args.json:
        print(json.dumps({"reports": [str(path) for path in written]}))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs at the classifier level, or two methods over seeds at the method level (bench.products.compare)."""
    schemes, attacks = _listed(args.scheme), _listed(args.attack)
    print(compare_command(args.base, args.variant, args.results_dir, schemes, attacks), end="")
    return 0


def _listed(values: list[str] | None) -> list[str]:
    return [item for item in ",".join(values or []).split(",") if item]


def cmd_export(args: argparse.Namespace) -> int:
    path = export_run(Path(args.results_dir), args.run_id, args.scheme, Path(args.out), args.format)
    print(path)
    progress.log(f"sidecar: {sidecar_path(path)}")
    return 0
