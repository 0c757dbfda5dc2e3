"""``bench study BASE VARIANT [VARIANT ...]``: its parser and what it does (bench.products.study).

Kept apart from ``bench.cli.app``/``bench.cli.commands`` so that neither grows past its size; ``app``
adds this parser to its subcommands, so this module imports only light modules at its top.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from pathlib import Path

from bench.cli.flags import add_config_flags, add_experiment_flags
from bench.errors import ConfigError

STUDY_LAUNCHERS = ("local", "submitit-local")


def add_study_parser(sub, stage_entry: Callable[[list[str]], int]) -> None:
    study = sub.add_parser(
        "study",
        help="add seeds until each variant's method-level comparison with the base is decided "
        "(group-sequential, α spent over the looks); writes study.md/study.csv",
        description="Seeds 0, 1, … of BASE and each VARIANT are run in looks (by default at 3, 5, 7 and 10 "
        "seeds) through the ordinary pipeline; stored seeds are reused and a killed study continues when "
        "the same command is rerun. Each comparison (variant × scheme × attack) stops when its method-level "
        "interval excludes 0, lies inside ±--difference, or the seed budget is spent.",
    )
    # optional here so that an experiment file (--config) may hold them; cmd_study requires them
    study.add_argument("base", nargs="?", help="the base method, e.g. acl")
    study.add_argument("variants", nargs="*", metavar="VARIANT", help="the variants compared with it, e.g. acl-ip")
    study.add_argument("--max-seeds", default="10", help="seed budget: the last look's seeds (default 10)")
    study.add_argument("--first-seeds", default="3", help="seeds of the first look (default 3, at least 2)")
    study.add_argument("--seeds-per-look", default="2", help="seeds added at each later look (default 2)")
    study.add_argument(
        "--difference", default="3", help="smallest difference of interest in points: inside ±it is 'no difference'"
    )
    study.add_argument("--alpha", default="0.05", help="family-wise false-positive rate of the whole study")
    study.add_argument(
        "--dry-run", action="store_true", help="print the design and the first look's plan; train nothing"
    )
    study.add_argument("--json", action="store_true", help="with --dry-run: the design, then one object per run")
    study.add_argument(
        "--launcher",
        choices=STUDY_LAUNCHERS,
        default="local",
        help="local: bench run's pool (--jobs); submitit-local: each look's runs as submitit jobs on this machine, "
        "as bench sweep --launcher submitit-local (logs in <results>/_jobs). A look needs its results before the "
        "next, so SLURM is not offered: run the study on a node, or sweep the seeds and study the stored ones",
    )
    study.add_argument(
        "--no-figures", action="store_true", help="write study.md and study.csv but not the figure (study.png/pdf)"
    )
    add_experiment_flags(study)
    add_config_flags(study)
    study.set_defaults(handler=cmd_study, stage_entry=stage_entry)


def _integer(args: argparse.Namespace, name: str) -> int:
    text = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    if not str(text).strip().isdigit():
        raise ConfigError(f"{flag}={text!r} is invalid: allowed integers >= 1")
    return int(text)


def _real(args: argparse.Namespace, name: str) -> float:
    text = getattr(args, name)
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--{name}={text!r} is invalid: allowed a number") from None


def cmd_study(args: argparse.Namespace) -> int:
    """Resolve and check the whole study, print it (``--dry-run``) or run it look by look.

    Its modules are imported here, when the command runs: ``app`` builds its parser from this module,
    and ``bench --help`` must not load torch (issue #22)."""
    from bench.cli.commands import build_request, dry_run_requested, print_plan  # deferred: torch (the plan)
    from bench.config import check_directory  # deferred: torch (the config's engine tables)
    from bench.engine import progress  # deferred: rich
    from bench.products.study import look_plan, new_study, run_study  # deferred: torch, scipy
    from bench.products.study_report import write_study  # deferred: torch, pandas
    from bench.runs import sweep  # deferred: torch, submitit
    from bench.runs.pipeline import run_plan  # deferred: torch
    from bench.runs.plan import assemble  # deferred: torch

    dry_run = dry_run_requested(args)
    request = build_request(args, (args.base, *args.variants))
    study = new_study(
        request,
        args.base,
        args.variants,
        max_seeds=_integer(args, "max_seeds"),
        first=_integer(args, "first_seeds"),
        step=_integer(args, "seeds_per_look"),
        alpha=_real(args, "alpha"),
        difference=_real(args, "difference"),
    )
    study.command = "bench study " + " ".join(shlex.quote(arg) for arg in getattr(args, "argv", []))
    if dry_run:
        request.dry_run = True
        plan = look_plan(request, (study.base, *study.variants), study.design.looks[0])
        if args.json:
            print(json.dumps({"study": study.to_dict()}))
        else:
            alphas = ", ".join(f"{k} seeds α {a:.3g}" for k, a in zip(study.design.looks, study.design.alphas))
            print(f"study: {len(study.tracks)} comparison(s) of {', '.join(study.variants)} vs {study.base}; {alphas}")
        return print_plan(plan, args.json)
    reports_dir = Path(assemble(request).reports_dir)
    check_directory("reports_dir", reports_dir)
    runner = run_plan
    if args.launcher == "submitit-local":
        options = sweep.ClusterOptions(folder=(Path(assemble(request).results_dir) / "_jobs").resolve())
        runner = sweep.submitit_local_runner(request, options, args.stage_entry)
    figures = not args.no_figures
    run_study(study, request, runner=runner, after_look=lambda current: write_study(current, reports_dir, figures))
    written = write_study(study, reports_dir, figures)
    for track in study.tracks:
        progress.log(
            f"{track.variant} {track.scheme} {track.attack}: {track.decision} "
            f"after {track.seeds} seeds ({track.reason})"
        )
    progress.log(f"study: {', '.join(str(path) for path in written[:2])}; {len(study.trained)} run(s) trained")
    if not args.quiet:
        print(written[0].read_text(), end="")
    return 0
