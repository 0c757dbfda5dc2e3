"""What each ``bench`` subcommand does, from its parsed arguments (``bench.cli.app`` builds the parser).

A command turns its arguments into a request (``build_request``), resolves the plan once
(``bench.runs.plan``) and hands it to the pipeline, the sweep, the report or the exporter; it returns
the exit status. Errors are raised, not printed: ``bench.cli.app.main`` turns them into one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.cli.flags import given_report_flags
from bench.cli.request import SHORT_FLAGS, build_request, selected_methods  # noqa: F401  (also the sweep's, study's)
from bench.config import ConfigError, check_directory
from bench.engine import collective as step_collective
from bench.engine import progress
from bench.engine.device import resolve_device
from bench.methodkit import registry
from bench.runs import distributed, sweep
from bench.runs.collect import describe, existing_store, merge_stores, run_status
from bench.runs.external import imported_plan
from bench.runs.pipeline import run_plan
from bench.runs.plan import build_plan
from bench.runs.tracking import log_report
from bench.store.results import ResultsStore


def cmd_list(args: argparse.Namespace) -> int:
    methods = registry.available()  # the methods and the published post forms (dynacl++), each with its runner
    spelled = {name: registry.spelling(name) for name in methods}
    if args.json:
        for name, cls in methods.items():
            print(
                json.dumps(
                    {
                        "name": name,
                        "description": spelled[name].description,
                        "base": spelled[name].base or name,
                        "bn_branches": list(cls.model.branches),
                        "finetune_bn": cls.model.finetune_bn,
                        "inferior_positives": cls.variant.inferior_positives,
                        "hard_negatives": cls.variant.hard_negatives,
                        "in_all": cls.selected_by_all,
                    }
                )
            )
        return 0
    width = max(len(name) for name in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {'' if cls.selected_by_all else '° '}{spelled[name].description}")
    if not all(cls.selected_by_all for cls in methods.values()):
        print("° not in --methods all (the A-InfoNCE table): select by name or pattern, e.g. --methods 'dynacl*' deacl")
    print("Every method without a post stage also runs as '<name>++' (then DynACL++'s LP-AFT): --post pp")
    for line in registry.broken_plugins():
        print(f"not listed: {line}")
    return 0


def cmd_run(args: argparse.Namespace, *, pretrain_only: bool = False) -> int:
    request = build_request(args, selected_methods(args))
    if pretrain_only:
        request.overrides["finetune.schemes"] = ""
    as_json = getattr(args, "json", False)  # `bench pretrain` has neither --dry-run nor --json
    request.dry_run = bool(getattr(args, "dry_run", False))  # --json alone: a JSON summary after the run
    plan = build_plan(request)
    if request.dry_run:
        return print_plan(plan, as_json)
    try:
        with step_collective.session(resolve_device(plan.base.device).type) as collective:
            if collective is None:
                outcomes = run_plan(plan)
            else:  # under torchrun: rank 0 runs the plan, the others join its pretraining
                plan = distributed.plan_for_world(plan, request, collective.world)
                if collective.rank != 0:
                    distributed.follow(plan)
                    return 0
                outcomes = distributed.lead(plan)
    except step_collective.DistributedRunFailed as error:  # the groups are gone: no barrier
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    reports = []
    if not pretrain_only and not args.no_report:
        reports = _plan_report(plan, quiet=args.quiet or as_json, figures=not args.no_figures)
        log_report(
            plan.track,
            plan.reports_dir,
            reports,
            {"results_dir": str(plan.results_dir), "runs": [r.run_id for r in plan.runs]},
        )
    status = _summarise(outcomes)
    if as_json:
        print(json.dumps(run_summary(plan, outcomes, reports)))
    return status


def run_summary(plan, outcomes, reports: list[Path]) -> dict:
    """``bench run --json``: what a script needs after a run (each run's id, status and flags, the
    stored results and the report files), as one JSON object on stdout."""
    flags = {run.run_id: list(run.flags) for run in plan.runs}
    keys = ("run_id", "method", "status", "reason")
    runs = [{**{key: getattr(o, key) for key in keys}, "flags": flags.get(o.run_id, [])} for o in outcomes]
    return {"runs": runs, "results": str(plan.results_dir / "results.csv"), "reports": [str(path) for path in reports]}


def dry_run_requested(args: argparse.Namespace) -> bool:
    if getattr(args, "json", False) and not getattr(args, "dry_run", False):
        raise ConfigError("--json is invalid without --dry-run: allowed --dry-run --json")
    return bool(getattr(args, "dry_run", False))


def print_plan(plan, as_json: bool) -> int:
    """The resolved plan, nothing loaded or trained: one line (or JSON object) per run and scheme, and notes."""
    for run in plan.runs:
        if run.settings_note():
            (progress.log if as_json else print)(run.settings_note())
        if (labels := run.inputs.get("pseudo_labels")) is not None and not as_json:
            need = "" if run.config.data.download else "; a run needs --download"
            fetch = "" if labels.present else f" (would download {labels.url}, sha256 {labels.sha256}{need})"
            print(f"{run.run_id}  pseudo-labels {labels.source}{': ' + labels.path if labels.path else ''}{fetch}")
        for described in run.scheme_dicts():
            if as_json:
                print(json.dumps(described))
                continue
            tune = described["finetune"]
            if tune is None:
                print(f"{run.run_id}  pretraining only")
                continue
            print(
                f"{run.run_id}  {described['scheme']}  protocol {tune['protocol']}  epochs {tune['epochs']}  "
                f"batch {tune['batch_size']}  lr {tune['lr']:g}  milestones {','.join(map(str, tune['milestones']))}"
                f"  attack steps {tune['train_attack_steps']}  dual-BN {tune['dual_bn']}  head {tune['head_init']}  "
                f"eval step {described['evaluate']['pgd_step_size']:.5g}  reported {tune['reported_epoch']} epoch"
            )
    progress.log(f"dry run: {len(plan.runs)} run(s) resolved; nothing was loaded, fetched or trained")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """A published table's rows under its protocol, then the comparison with Δ (``bench.products.reproduce``)."""
    from bench.products.reproduce import get_table, reproduce_plan, write_reproduction  # deferred: pandas, scipy

    table = get_table(args.table)
    request = build_request(args, table.registered_methods())
    request.dry_run = dry_run_requested(args)
    dataset, seed = request.overrides.pop("data.name", None), request.overrides.pop("seed", None)
    if seed is not None and args.seeds:
        raise ConfigError("--seed is invalid with --seeds: allowed one of them")
    datasets = [dataset] if dataset else list(table.datasets)
    seeds = [_seed(text) for text in ",".join(args.seeds or [seed or "0"]).split(",") if text]
    plan = reproduce_plan(table, request, datasets, seeds)
    if request.dry_run:
        return print_plan(plan, args.json)
    outcomes = run_plan(plan)
    written = write_reproduction(table, plan, plan.results_dir / "reference", plan.reports_dir)
    if not args.quiet:
        for path in written:
            if path.suffix == ".md":
                print(path.read_text())
    progress.log("reproduction: " + ", ".join(str(path) for path in written))
    return _summarise(outcomes)


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"--seeds {text!r} is invalid: allowed integers >= 0")
    return int(text)


def _summarise(outcomes, resume: str = "rerun with --resume") -> int:
    """One line for the whole plan, one per failed run; exit status 1 when any run failed. ``resume``:
    how this command continues a run (a sweep refuses --resume: it resumes by itself)."""
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("completed", "skipped")}
    progress.log(f"done: {counts['completed']} completed, {counts['skipped']} skipped, {len(failed)} failed")
    for outcome in failed:
        reason = outcome.reason.replace("rerun with --resume", resume)
        print(f"bench: run {outcome.run_id} ({outcome.method}) failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _plan_report(plan, quiet: bool, figures: bool = True) -> list[Path]:
    """The report of the plan's stores, written after its runs (``bench.cli.products.write_report``)."""
    from bench.cli.products import write_report  # deferred: pandas, scipy, matplotlib (only a report needs them)

    return write_report((plan.results_dir, plan.reports_dir), paper=False, quiet=quiet, figures=figures)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretraining alone: the runs of ``bench run`` with no finetuning scheme (their encoders are stored)."""
    return cmd_run(args, pretrain_only=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``bench finetune/evaluate``: a plan of one run whose encoder is imported, run by the pipeline."""
    plan = imported_plan(
        build_request(args, ("all",)),
        checkpoint=args.checkpoint,
        checkpoint_format=args.format,
        branch=args.branch,
        name=args.name,
        robustbench_model=args.robustbench_model,
        pretrain_dataset=args.pretrain_dataset,
    )
    outcomes = run_plan(plan)
    if not args.no_report:
        _plan_report(plan, quiet=args.quiet, figures=not args.no_figures)
    return _summarise(outcomes)


def cmd_collect(args: argparse.Namespace) -> int:
    """Rebuild results.csv from the run directories, after merging other stores (``--from``)."""

    store = ResultsStore(args.results_dir)
    if args.sources:
        report = merge_stores(store, [Path(source) for source in args.sources])
        progress.log(
            f"merged: {len(report.copied)} run(s) copied, {len(report.identical)} already here, "
            f"{len(report.incomplete)} incomplete in their store (not copied)"
        )
    rows = store.collect()
    progress.log(f"{store.table}: {rows} rows from {sum(run.is_complete() for run in store.run_dirs())} complete runs")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per run: complete, failed (why), or the stage it reached; read from the run directories only."""

    statuses = [run_status(run) for run in existing_store(args.results_dir).run_dirs()]
    for status in statuses:
        print(json.dumps(status) if args.json else f"{status['run_id']}  {describe(status)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The plan's runs as scheduler jobs (slurm, submitit-local), the local pool, or the jobs' command lines."""
    if args.json and not args.dry_run:
        raise ConfigError("--json is invalid without --dry-run: allowed --dry-run --json")
    check_directory("--jobs-dir", args.jobs_dir or ".")  # a file there failed late, exit 1 (review 2, D15)
    request = build_request(args, selected_methods(args))
    request.resume = True  # a sweep continues what an earlier sweep (or a requeued job) left
    request.dry_run = args.dry_run  # a dry run fetches nothing (AdvCL's pseudo-labels with --download)
    plan = build_plan(request)
    options = sweep.ClusterOptions(
        folder=Path(args.jobs_dir or plan.results_dir / "_jobs").resolve(),
        **{name: getattr(args, name) for name in sweep.CLUSTER_FLAGS},
    )
    jobs = sweep.plan_jobs(plan, request, report_flags=given_report_flags(args))
    if args.dry_run:
        for job in jobs:
            print(json.dumps(job.to_json()) if args.json else f"{job.key}  {job.command}")
        return 0
    if args.launcher == "local":
        outcomes = run_plan(plan)
        if not args.no_report:
            _plan_report(plan, quiet=args.quiet, figures=not args.no_figures)
        return _summarise(outcomes, SWEEP_RESUMES)
    if not jobs:
        progress.log(f"nothing to submit: the {len(plan.runs)} run(s) of the sweep are complete (--force reruns them)")
        return 0
    if args.launcher == "slurm":
        ids = sweep.submit_slurm(jobs, options, args.stage_entry)
        for job in jobs:
            progress.log(f"submitted {job.key}: SLURM job {ids[job.key]}")
        progress.log(
            f"{len(ids)} jobs submitted (logs in {options.folder}); follow the runs with "
            f"`bench status --results-dir {plan.results_dir}`"
        )
        return 0
    failures = sweep.run_submitit_local(jobs, options, args.stage_entry)
    if "collect" in failures:
        reason = failures["collect"].replace("rerun with --resume", SWEEP_RESUMES)
        print(f"bench: the collect job failed: {reason}", file=sys.stderr)
    return max(_summarise(sweep.outcomes(plan, jobs, failures), SWEEP_RESUMES), int("collect" in failures))


SWEEP_RESUMES = "rerun the same bench sweep: it continues them"
