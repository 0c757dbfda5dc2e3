"""``bench stage``: one stage of the runs the settings select, what each job of a sweep runs.

Apart from ``bench.cli.commands`` so that a scheduler job imports the run machinery only, not the report,
comparison and export stacks (scipy.stats, matplotlib, ...): about 2 s less at the start of every job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.request import build_request, selected_methods
from bench.runs import stage_command
from bench.runs.plan import assemble, build_plan


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage of the runs the settings select (what a sweep's job runs); continues from what is stored."""
    if args.stage == "collect":
        config = assemble(build_request(args, ("all",)))
        stage_command.collect_stage(Path(config.results_dir))
        if not args.no_report:
            from bench.cli.products import write_report  # deferred: the report stack, for the collect job only

            dirs = (Path(config.results_dir), Path(config.reports_dir))
            write_report(dirs, paper=False, quiet=True, figures=not args.no_figures)
        return 0
    request = build_request(args, selected_methods(args))
    request.resume = True
    failed = stage_command.run_stage_of_plan(build_plan(request), args.stage, args.scheme, args.run_id)
    for run_id, method, reason in failed:
        print(f"bench: run {run_id} ({method}) failed: {reason}", file=sys.stderr)
    return 1 if failed else 0
