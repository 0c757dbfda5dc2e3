"""The ``bench`` command: run, list, pretrain, finetune, evaluate, report, reproduce, compare, export, collect,
status, sweep, stage, speed.

Every configuration field can be overridden (``--set pretrain.lr=0.5``); the common ones
have short flags. All checking happens before any work: a bad value exits with status 2
and one line naming the value and the allowed ones, and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from bench import progress, registry
from bench.atomic import DiskFullError
from bench.checkpoints import FORMATS, CheckpointError
from bench.config import ATTACKS, DEVICES, PRESETS, SCHEMES, ConfigError, check_directory
from bench.data import DATASETS, DatasetMissingError
from bench.downloads import DownloadError
from bench.protocols import PROTOCOLS
from bench.provenance import code_version
from bench.results import RowError, StoreError

SPEED_STAGES = ("pretrain", "eval", "epoch")
SHORT_FLAGS = {  # flag dest → dotted config field
    "dataset": "data.name", "eval_dataset": "data.eval_name", "data_dir": "data.data_dir", "image_size": "data.image_size",
    "arch": "model.arch", "seed": "seed", "device": "device", "jobs": "jobs", "epochs": "pretrain.epochs",
    "batch_size": "pretrain.batch_size", "lr": "pretrain.lr", "optimizer": "pretrain.optimizer",
    "finetune_epochs": "finetune.epochs", "schemes": "finetune.schemes", "epsilon": "evaluate.epsilon",
    "step_size": "evaluate.step_size", "train_epsilon": "attack.epsilon", "train_steps": "attack.steps",
    "attacks": "evaluate.attacks", "n_eval": "evaluate.n_eval", "results_dir": "results_dir", "reports_dir": "reports_dir",
    "protocol": "finetune.protocol",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (each overrides one field of the preset)")
    group.add_argument("--preset", default="smoke", help=f"settings bundle: {', '.join(PRESETS)} (default smoke)")
    group.add_argument("--protocol", help=f"finetuning protocol: {', '.join(PROTOCOLS)} (default unified; "
                       "docs/protocols.md)")
    group.add_argument("--dataset", help=f"pretraining dataset: {', '.join(DATASETS)}")
    group.add_argument("--eval-dataset", help="finetune/evaluate on another dataset (transfer), e.g. stl10")
    group.add_argument("--data-dir", help="where datasets live (default ~/data)")
    group.add_argument("--download", action="store_true",
                       help="download missing torchvision datasets and AdvCL's released pseudo-labels (sha256-checked)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model's forward in pretraining (pretrain.compile; the PGD inner loops)")
    group.add_argument("--image-size", help="resolution images are resized to")
    group.add_argument("--arch", help="encoder: small_cnn | resnet18")
    group.add_argument("--seed", help="random seed (integer >= 0)")
    group.add_argument("--device", help=f"{' | '.join(DEVICES)} (auto: CUDA when available)")
    group.add_argument("--jobs", help="method runs in parallel: 0 = auto (one per core on CPU, 1 on CUDA)")
    group.add_argument("--epochs", help="pretraining epochs")
    group.add_argument("--batch-size", help="pretraining batch size")
    group.add_argument("--lr", help="pretraining peak learning rate")
    group.add_argument("--optimizer", help="pretraining optimiser: sgd | lars")
    group.add_argument("--train-epsilon", help="ε of the attack inside pretraining (e.g. 8/255)")
    group.add_argument("--train-steps", help="PGD steps inside pretraining")
    group.add_argument("--finetune-epochs", help="finetuning epochs")
    group.add_argument("--schemes", help=f"comma-separated subset of {','.join(SCHEMES)}")
    group.add_argument("--epsilon", help="evaluation ε (e.g. 8/255)")
    group.add_argument("--step-size", help="evaluation PGD step size")
    group.add_argument("--attacks", help=f"comma-separated subset of {','.join(ATTACKS)}")
    group.add_argument("--n-eval", help="evaluate a fixed seeded subset of N test images (0 = all)")
    group.add_argument("--results-dir", help="results store (default results/)")
    group.add_argument("--reports-dir", help="report output (default reports/)")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any config field by dotted name, e.g. pretrain.warmup_epochs=2")
    group.add_argument("--param", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                       help="method hyperparameter, e.g. alpha=0.3 or advcl-ip:adaptive_epochs=5")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def _add_dry_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and validate the plan, print it and stop (nothing is loaded, fetched or trained)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per run and scheme")


def _add_product_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several runs (the plan is seeds × datasets × methods)")
    group.add_argument("--seeds", nargs="+", metavar="SEED", help="several seeds, e.g. --seeds 0 1 2 (not with --seed)")
    group.add_argument("--datasets", nargs="+", metavar="DATASET",
                       help="several pretraining datasets, e.g. --datasets cifar10 cifar100 (not with --dataset)")


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r} is invalid: allowed form KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _request(args: argparse.Namespace, methods: tuple[str, ...]):
    from bench.plan import RunRequest

    overrides: dict[str, str] = {}
    for dest, dotted in SHORT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[dotted] = value
    if getattr(args, "download", False):
        overrides["data.download"] = "true"
    if getattr(args, "compile", False):
        overrides["pretrain.compile"] = "true"
    for item in args.set:
        key, value = _split_assignment(item, "--set")
        overrides[key] = value
    method_params: dict[str, dict[str, str]] = {}
    for item in args.param:
        key, value = _split_assignment(item, "--param")
        scope, _, name = key.rpartition(":")
        method_params.setdefault(scope or "*", {})[name] = value
    return RunRequest(preset=args.preset, overrides=overrides, method_params=method_params, methods=methods,
                      force=getattr(args, "force", False), resume=getattr(args, "resume", False),
                      seeds=tuple(getattr(args, "seeds", None) or ()),
                      datasets=tuple(getattr(args, "datasets", None) or ()))


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(m for m in ",".join(args.methods).split(",") if m)


def cmd_list(args: argparse.Namespace) -> int:
    methods = registry.available()
    if args.json:
        for name, cls in methods.items():
            print(json.dumps({"name": name, "description": cls.description, "base": cls.base_name or name,
                              "bn_branches": list(cls.bn_branches), "finetune_bn": cls.finetune_bn,
                              "inferior_positives": cls.inferior_positives, "hard_negatives": cls.hard_negatives,
                              "in_all": cls.selected_by_all}))
        return 0
    width = max(len(name) for name in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {'' if cls.selected_by_all else '° '}{cls.description}")
    if not all(cls.selected_by_all for cls in methods.values()):
        print("° not in --methods all (the A-InfoNCE table): select by name or pattern, "
              "e.g. --methods 'dynacl*' deacl")
    return 0


def cmd_run(args: argparse.Namespace, *, pretrain_only: bool = False) -> int:
    from bench import distributed
    from bench.device import resolve_device
    from bench.pipeline import run_plan
    from bench.plan import build_plan

    request = _request(args, _methods(args))
    if pretrain_only:
        request.overrides["finetune.schemes"] = ""
    request.dry_run = _dry_run(args)
    plan = build_plan(request)
    if request.dry_run:
        return print_plan(plan, args.json)
    collective = distributed.init_from_env(resolve_device(plan.base.device).type)
    if collective is not None:  # under torchrun: rank 0 runs the plan, the others join its pretraining
        plan = distributed.plan_for_world(plan, request, collective.world)
        try:
            if collective.rank != 0:
                distributed.follow(plan)
                return 0
            outcomes = distributed.lead(plan)
        except distributed.DistributedRunFailed as error:
            print(f"bench: error: {error}", file=sys.stderr)
            return 1
    else:
        outcomes = run_plan(plan)
    if not pretrain_only and not args.no_report:
        _report((plan.results_dir, plan.reports_dir), paper=False, quiet=args.quiet)
    return _summarise(outcomes)


def _dry_run(args: argparse.Namespace) -> bool:
    if getattr(args, "json", False) and not getattr(args, "dry_run", False):
        raise ConfigError("--json is invalid without --dry-run: allowed --dry-run --json")
    return bool(getattr(args, "dry_run", False))


def print_plan(plan, as_json: bool) -> int:
    """The resolved plan, nothing loaded or trained: one line (or JSON object) per run and scheme."""
    for run in plan.runs:
        if run.pseudo_labels is not None and not as_json:
            labels = run.pseudo_labels
            fetch = "" if labels.present else f" (--download fetches it from {labels.url}, sha256 {labels.sha256})"
            print(f"{run.run_id}  pseudo-labels {labels.source}{': ' + labels.path if labels.path else ''}{fetch}")
        for described in run.scheme_dicts():
            if as_json:
                print(json.dumps(described))
                continue
            tune = described["finetune"]
            if tune is None:
                print(f"{run.run_id}  pretraining only")
                continue
            print(f"{run.run_id}  {described['scheme']}  protocol {tune['protocol']}  epochs {tune['epochs']}  "
                  f"batch {tune['batch_size']}  lr {tune['lr']:g}  milestones {','.join(map(str, tune['milestones']))}"
                  f"  attack steps {tune['train_attack_steps']}  dual-BN {tune['dual_bn']}  head {tune['head_init']}  "
                  f"eval step {tune['eval_step_size']:.5g}  reported {tune['reported_epoch']} epoch")
    progress.log(f"dry run: {len(plan.runs)} run(s) resolved; nothing was loaded, fetched or trained")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """A published table's rows under its protocol, then the comparison with Δ (``bench.reproduce``)."""
    from bench.pipeline import run_plan
    from bench.reproduce import get_table, reproduce_plan, write_reproduction

    table = get_table(args.table)
    request = _request(args, table.registered_methods())
    request.dry_run = _dry_run(args)
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


def _summarise(outcomes) -> int:
    """One line for the whole plan, one per failed run; exit status 1 when any run failed."""
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("completed", "skipped")}
    progress.log(f"done: {counts['completed']} completed, {counts['skipped']} skipped, {len(failed)} failed")
    for outcome in failed:
        print(f"bench: run {outcome.run_id} ({outcome.method}) failed: {outcome.reason}", file=sys.stderr)
    return 1 if failed else 0


def _report(dirs: tuple[Path, Path], paper: bool, quiet: bool, curve_methods: list[str] | None = None) -> int:
    """Write the report in the registry's method order (plugins included): methods without adversarial
    views (the non-adversarial anchor) first, then each base method followed by its A-InfoNCE variants."""
    from bench import registry
    from bench.report import write_reports

    methods = registry.available()
    bases = sorted((name for name, cls in methods.items() if not cls.base_name),
                   key=lambda name: methods[name].has_adversarial_views)
    order = [name for base in bases for name in (base, *(n for n, c in methods.items() if c.base_name == base))]
    results_dir, reports_dir = dirs
    check_directory("reports_dir", reports_dir)
    written = write_reports(results_dir / "results.csv", reports_dir, results_dir / "runs",
                            results_dir / "reference", paper=paper, curve_methods=curve_methods,
                            method_order=order + [name for name in methods if name not in order])
    index = next((path for path in written if Path(path).name == "index.md"), reports_dir / "index.md")
    if not quiet:
        table = reports_dir / "results.md"
        if table.exists():
            print(table.read_text())
    progress.log(f"report: {index}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    methods = [name for name in ",".join(args.curve_methods or []).split(",") if name]
    return _report((Path(args.results_dir), Path(args.reports_dir)), paper=args.paper, quiet=args.quiet,
                   curve_methods=methods or None)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretraining alone: the runs of ``bench run`` with no finetuning scheme (their encoders are stored)."""
    return cmd_run(args, pretrain_only=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bench.external import evaluate_external
    from bench.plan import assemble

    request = _request(args, ("all",))
    run_id = evaluate_external(request, checkpoint=args.checkpoint, checkpoint_format=args.format, branch=args.branch,
                               name=args.name, robustbench_model=args.robustbench_model, force=args.force,
                               pretrain_dataset=args.pretrain_dataset)
    if not args.no_report:
        config = assemble(request)
        return _report((Path(config.results_dir), Path(config.reports_dir)), paper=False, quiet=args.quiet)
    progress.log(f"done: {run_id}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Rebuild results.csv from the run directories, after merging other stores (``--from``)."""
    from bench.collect import merge_stores
    from bench.results import ResultsStore

    store = ResultsStore(args.results_dir)
    if args.sources:
        report = merge_stores(store, [Path(source) for source in args.sources])
        progress.log(f"merged: {len(report.copied)} run(s) copied, {len(report.identical)} already here, "
                     f"{len(report.incomplete)} incomplete in their store (not copied)")
    rows = store.collect()
    progress.log(f"{store.table}: {rows} rows from {sum(run.is_complete() for run in store.run_dirs())} complete runs")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per run: complete, failed (why), or the stage it reached; read from the run directories only."""
    from bench.collect import describe, run_status
    from bench.results import ResultsStore

    statuses = [run_status(run) for run in ResultsStore(args.results_dir).run_dirs()]
    for status in statuses:
        print(json.dumps(status) if args.json else f"{status['run_id']}  {describe(status)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The plan's runs as scheduler jobs (slurm, submitit-local), the local pool, or the jobs' command lines."""
    import json

    from bench import sweep
    from bench.pipeline import run_plan
    from bench.plan import build_plan

    if args.json and not args.dry_run:
        raise ConfigError("--json is invalid without --dry-run: allowed --dry-run --json")
    request = _request(args, _methods(args))
    request.resume = True  # a sweep continues what an earlier sweep (or a requeued job) left
    request.dry_run = args.dry_run  # a dry run fetches nothing (AdvCL's pseudo-labels with --download)
    plan = build_plan(request)
    options = sweep.ClusterOptions(folder=Path(args.jobs_dir or plan.results_dir / "_jobs").resolve(),
                                   **{name: getattr(args, name) for name in sweep.CLUSTER_FLAGS})
    jobs = sweep.plan_jobs(plan, request, no_report=args.no_report)
    if args.dry_run:
        for job in jobs:
            print(json.dumps(job.to_json()) if args.json else f"{job.key}  {job.command}")
        return 0
    if args.launcher == "local":
        outcomes = run_plan(plan)
        if not args.no_report:
            _report((plan.results_dir, plan.reports_dir), paper=False, quiet=args.quiet)
        return _summarise(outcomes)
    if not jobs:
        progress.log(f"nothing to submit: the {len(plan.runs)} run(s) of the sweep are complete (--force reruns them)")
        return 0
    if args.launcher == "slurm":
        ids = sweep.submit_slurm(jobs, options)
        for job in jobs:
            progress.log(f"submitted {job.key}: SLURM job {ids[job.key]}")
        progress.log(f"{len(ids)} jobs submitted (logs in {options.folder}); follow the runs with "
                     f"`bench status --results-dir {plan.results_dir}`")
        return 0
    failures = sweep.run_submitit_local(jobs, options)
    if "collect" in failures:
        print(f"bench: the collect job failed: {failures['collect']}", file=sys.stderr)
    return max(_summarise(sweep.outcomes(plan, jobs, failures)), int("collect" in failures))


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage of the runs the settings select (what a sweep's job runs); continues from what is stored."""
    from bench import sweep
    from bench.plan import assemble, build_plan

    if args.stage == "collect":
        config = assemble(_request(args, ("all",)))
        sweep.collect_stage(Path(config.results_dir))
        if not args.no_report:
            _report((Path(config.results_dir), Path(config.reports_dir)), paper=False, quiet=True)
        return 0
    request = _request(args, _methods(args))
    request.resume = True
    failed = sweep.run_stage_of_plan(build_plan(request), args.stage, args.scheme, args.run_id)
    for run_id, method, reason in failed:
        print(f"bench: run {run_id} ({method}) failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def run_stage_command(argv: list[str]) -> int:
    """``bench stage ...`` inside a scheduler job: no signal handlers of its own (the scheduler's
    stay in place, e.g. submitit's requeue on preemption) and errors propagate as the job's failure."""
    args = build_parser().parse_args(argv)
    if args.command != "stage":
        raise ConfigError(f"command {args.command!r} is invalid inside a sweep job: allowed 'stage'")
    progress.set_quiet(args.quiet)
    progress.set_bars(False)
    return args.handler(args)


def cmd_compare(args: argparse.Namespace) -> int:
    """Paired per-image comparison of two evaluated runs (bench.compare)."""
    from bench.compare import compare_runs, find_run, format_results

    base, variant = find_run(args.base, args.results_dir), find_run(args.variant, args.results_dir)
    results = compare_runs(base, variant, _listed(args.scheme), _listed(args.attack), names=(args.base, args.variant))
    print(format_results(results, args.base, args.variant), end="")
    return 0


def _listed(values: list[str] | None) -> list[str]:
    return [item for item in ",".join(values or []).split(",") if item]


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import export_run, sidecar_path

    path = export_run(Path(args.results_dir), args.run_id, args.scheme, Path(args.out), args.format)
    print(path)
    progress.log(f"sidecar: {sidecar_path(path)}")
    return 0


def _selected(plan) -> list:
    """The plan's runs of the selected methods: a teacher run the plan adds (DeACL's SimCLR) is not
    measured unless selected; ``bench speed`` gives a distilling method an untrained teacher."""
    names = set(registry.resolve(plan.base.methods))
    return [run for run in plan.runs if run.method in names]


def cmd_speed(args: argparse.Namespace) -> int:
    """``bench speed``: fast path vs reference-style path, side by side (bench.speed); writes speed.csv/md."""
    import dataclasses
    import shlex

    from bench.atomic import write_atomic
    from bench.device import resolve_device
    from bench.plan import build_plan
    from bench.provenance import code_version, now
    from bench.speed import (QUICK, QUICK_EXTRA, QUICK_EXTRA_METHODS, QUICK_EXTRA_STEPS, QUICK_METHODS, SpeedOptions,
                             run_speed)
    from bench.speed_report import SpeedContext, describe, speed_csv, speed_markdown

    methods = tuple(m for m in ",".join(args.methods or (QUICK_METHODS if args.quick else ["all"])).split(",") if m)
    plan = build_plan(_request(args, methods))
    options = dataclasses.replace(QUICK if args.quick else SpeedOptions(), reference=not args.no_reference)
    if args.no_autoattack:
        options = dataclasses.replace(options, autoattack="")
    stages = tuple(stage for stage in ",".join(args.stages).split(",") if stage)
    for stage in stages:
        if stage not in SPEED_STAGES:
            raise ConfigError(f"--stages {stage!r} is invalid: allowed {list(SPEED_STAGES)}")
    options = dataclasses.replace(options, stages=stages or SPEED_STAGES)
    for name in ("warmup", "steps", "repeats", "eval_images", "loader_workers"):
        if getattr(args, name) is not None:
            options = dataclasses.replace(options, **{name: _count(getattr(args, name), name)})
    extra = []
    if args.quick:
        extra_request = _request(args, QUICK_EXTRA_METHODS)
        extra_request.overrides.update(QUICK_EXTRA)
        extra = _selected(build_plan(extra_request))
    epoch_runs = _selected(build_plan(_request(args, tuple(args.epoch)))) if args.epoch else []
    device = resolve_device(plan.base.device)
    rows = run_speed(_selected(plan), plan.base, options, device=device,
                     synthetic=_count(args.synthetic or 0, "synthetic"), extra=extra,
                     extra_options=dataclasses.replace(options, steps=QUICK_EXTRA_STEPS),
                     epoch_runs=epoch_runs)
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    context = SpeedContext(device.type, name, plan.base.preset, plan.base.data.image_size, torch.__version__,
                           torch.get_num_threads(), code_version(), now(),
                           "bench speed " + " ".join(shlex.quote(arg) for arg in args.argv), device.type == "cpu")
    csv_path = write_atomic(plan.results_dir / "speed.csv", speed_csv(rows, context))
    md_path = write_atomic(plan.reports_dir / "speed.md", speed_markdown(rows, context))
    for key, ratio in describe(rows).items():
        progress.log(f"  {key}: fast/reference-style {ratio:.2f}×")
    progress.log(f"speed: {csv_path}, {md_path}")
    return 0


def _count(value: str | int, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"--{name.replace('_', '-')}={value!r} is invalid: allowed integers >= 0") from None
    if number < 0:
        raise ConfigError(f"--{name.replace('_', '-')}={value!r} is invalid: allowed integers >= 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="acl-bench: pretrain, finetune (SLF/ALF/AFF), attack (PGD-20, AutoAttack) and report "
        "adversarial contrastive learning methods in one harness.",
    )
    parser.add_argument("--version", action="version", version=f"acl-bench {code_version()}",
                        help="package version and git commit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="pretrain, finetune and evaluate methods, then write the report")
    run.add_argument("--methods", nargs="+", default=["all"], help="method names or 'all' (see `bench list`)")
    run.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    run.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    _add_dry_run_flags(run)
    _add_config_flags(run)
    _add_product_flags(run)
    run.set_defaults(handler=cmd_run)

    repro = sub.add_parser("reproduce", help="run the rows of a published table under its protocol and write them "
                           "beside the published numbers with Δ (--dataset: one of the table's, default all)")
    repro.add_argument("table", help="ainfonce-table1 | robustssl")
    repro.add_argument("--seeds", nargs="+", metavar="SEED", help="seeds to run, e.g. --seeds 0 1 2 (default 0)")
    repro.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    repro.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    _add_dry_run_flags(repro)
    _add_config_flags(repro)
    repro.set_defaults(handler=cmd_reproduce, preset="paper")

    pre = sub.add_parser("pretrain", help="pretrain methods and store their encoders (no finetuning)")
    pre.add_argument("--methods", nargs="+", default=["all"], help="method names or 'all'")
    pre.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    pre.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    _add_config_flags(pre)
    _add_product_flags(pre)
    pre.set_defaults(handler=cmd_pretrain)

    _add_sweep_parser(sub)
    _add_stage_parser(sub)

    for command, text in (("finetune", "finetune a stored or released encoder with SLF/ALF/AFF and evaluate it"),
                          ("evaluate", "evaluate an encoder checkpoint or a RobustBench model under our protocol")):
        ev = sub.add_parser(command, help=text)
        source = ev.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="encoder checkpoint file")
        source.add_argument("--robustbench-model", help="RobustBench model name (needs acl-bench[robustbench])")
        ev.add_argument("--format", default="bench", help="checkpoint format: " + ", ".join(FORMATS))
        ev.add_argument("--branch", help="BN branch to load from a multi-BN checkpoint (default: the format's adversarial one)")
        ev.add_argument("--name", help="method name to store the results under (default: the checkpoint's recorded "
                        "method, else FORMAT:FILE-STEM)")
        ev.add_argument("--pretrain-dataset", help="dataset the encoder was pretrained on, for the tables (default: "
                        "recorded in acl-bench checkpoints, else 'unknown')")
        ev.add_argument("--force", action="store_true", help="re-evaluate even if stored")
        ev.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
        _add_config_flags(ev)
        ev.set_defaults(handler=cmd_evaluate)

    rep = sub.add_parser("report", help="write tables and plots from results/results.csv (never trains)")
    rep.add_argument("--paper", action="store_true", help="also lay out the A-InfoNCE paper's Table 1 with references")
    rep.add_argument("--results-dir", default="results", help="results store (default results/)")
    rep.add_argument("--reports-dir", default="reports", help="output directory (default reports/)")
    rep.add_argument("--curve-methods", nargs="+", metavar="METHOD",
                     help="methods drawn in the accuracy-vs-ε plot (default: every method with ε-curve rows)")
    rep.add_argument("--quiet", action="store_true", help="do not print the table")
    rep.set_defaults(handler=cmd_report)

    speed = sub.add_parser("speed", help="throughput of the fast path vs a reference-style path (speed.csv, speed.md)")
    speed.add_argument("--methods", nargs="+", help="method names or 'all' (default all; with --quick one per family: "
                       "simclr acl rocl advcl-ip)")
    speed.add_argument("--quick", action="store_true", help="few short repeats, 32 evaluation images, APGD-CE for "
                       "AutoAttack, and ResNet-18 at batch 32 for acl and advcl-ip (minutes on a laptop CPU)")
    speed.add_argument("--warmup", help="untimed steps before the repeats (default 2)")
    speed.add_argument("--steps", help="steps per timed repeat (default 3)")
    speed.add_argument("--repeats", help="timed repeats per path; the median is reported (default 3)")
    speed.add_argument("--eval-images", help="images of the PGD-20/AutoAttack measurement, 0 = skip (default 256)")
    speed.add_argument("--loader-workers",
                       help="DataLoader workers of the reference-style path (default min(8, cores))")
    speed.add_argument("--synthetic", help="use N random CIFAR-shaped images instead of the dataset (no download)")
    speed.add_argument("--epoch", nargs="+", default=[], metavar="METHOD",
                       help="also time one whole epoch of these methods' fast path")
    speed.add_argument("--stages", nargs="+", default=[], help=f"what to measure: {', '.join(SPEED_STAGES)} "
                       "(default all; epoch needs --epoch)")
    speed.add_argument("--no-reference", action="store_true", help="measure the fast path only")
    speed.add_argument("--no-autoattack", action="store_true", help="skip the AutoAttack measurement")
    _add_config_flags(speed)
    speed.set_defaults(handler=cmd_speed)

    lst = sub.add_parser("list", help="list the registered methods with a one-line description")
    lst.add_argument("--json", action="store_true", help="one JSON object per method")
    lst.set_defaults(handler=cmd_list)

    cmp = sub.add_parser("compare", help="paired per-image test (McNemar) of two runs' accuracies, with the "
                         "minimum detectable difference")
    cmp.add_argument("base", help="a run id (or run directory): the base method")
    cmp.add_argument("variant", help="a run id (or run directory): the variant")
    cmp.add_argument("--scheme", action="append", metavar="SCHEME", help="only these schemes (default: all shared)")
    cmp.add_argument("--attack", action="append", metavar="ATTACK", help="only these attacks (default: all shared)")
    cmp.add_argument("--results-dir", default="results", help="results store (default results/)")
    cmp.set_defaults(handler=cmd_compare)

    exp = sub.add_parser("export", help="write a finetuned classifier as TorchScript, a RobustBench-format state "
                         "dict or safetensors, with a JSON sidecar (method, arch, normalisation, run id, metrics)")
    exp.add_argument("run_id", help="a run id from results/results.csv")
    exp.add_argument("--scheme", default="AFF", help="which finetuned classifier: SLF, ALF or AFF")
    exp.add_argument("--out", required=True, help="output file, or a directory to write RUN_ID-SCHEME.pt into")
    exp.add_argument("--format", default="torchscript", choices=("torchscript", "robustbench", "safetensors"),
                     help="torchscript: self-contained module (torch only); robustbench: {'state_dict': ...} as "
                     "robustbench.utils.load_model reads; safetensors: tensors only (needs acl-bench[export]). "
                     "Load any of them with bench.export.load_exported(path)")
    exp.add_argument("--results-dir", default="results", help="results store (default results/)")
    exp.set_defaults(handler=cmd_export)

    col = sub.add_parser("collect", help="rebuild results/results.csv from the run directories (and merge stores)")
    col.add_argument("--results-dir", default="results", help="results store (default results/)")
    col.add_argument("--from", dest="sources", nargs="+", metavar="DIR",
                     help="other results stores to merge in first (their complete runs are copied)")
    col.add_argument("--quiet", action="store_true", help="no status lines")
    col.set_defaults(handler=cmd_collect)

    stat = sub.add_parser("status", help="state of every run in the store (complete, failed, stage reached)")
    stat.add_argument("--results-dir", default="results", help="results store (default results/)")
    stat.add_argument("--json", action="store_true", help="one JSON object per run")
    stat.set_defaults(handler=cmd_status)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _add_sweep_parser(sub) -> None:
    from bench.sweep import LAUNCHERS

    sweep = sub.add_parser("sweep",
                           help="seeds × datasets × methods as scheduler jobs (SLURM via submitit) or locally",
                           description="Run a plan's stages (pretrain, then one finetune-and-evaluate job per scheme, "
                           "then collect + report) as jobs. Complete runs are skipped; interrupted ones continue.")
    sweep.add_argument("--methods", nargs="+", default=["all"], help="method names or 'all'")
    sweep.add_argument("--launcher", choices=LAUNCHERS, default="local",
                       help="local: this machine's pool (as bench run); slurm: job arrays through submitit; "
                       "submitit-local: submitit's local executor (the slurm code path, on this machine)")
    sweep.add_argument("--dry-run", action="store_true", help="print the jobs and their command lines; submit nothing")
    sweep.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per job")
    sweep.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    sweep.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    _add_config_flags(sweep)
    _add_product_flags(sweep)
    cluster = sweep.add_argument_group("scheduler (slurm, submitit-local)")
    cluster.add_argument("--jobs-dir", help="submitit's logs and job files (default RESULTS_DIR/_jobs; shared "
                         "filesystem on a cluster)")
    cluster.add_argument("--timeout-min", type=int, default=24 * 60,
                         help="time limit of a pretrain or finetune job; a timed-out job requeues and resumes")
    cluster.add_argument("--max-timeouts", type=int, default=3, help="requeues after timeouts before a job fails")
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument("--account", help="SLURM account")
    cluster.add_argument("--constraint", help="SLURM node constraint, e.g. a100")
    cluster.add_argument("--qos", help="SLURM quality of service")
    cluster.add_argument("--gpus-per-node", type=int,
                         help="GPUs per pretrain/finetune job (default 1 on SLURM, 0 locally)")
    cluster.add_argument("--cpus-per-task", type=int, help="CPU cores per job")
    cluster.add_argument("--mem-gb", type=float, help="memory per job")
    cluster.add_argument("--array-parallelism", type=int, default=0,
                         help="jobs of one array running at once (0: SLURM's limit; locally one per core)")
    sweep.set_defaults(handler=cmd_sweep)


def _add_stage_parser(sub) -> None:
    stage = sub.add_parser("stage", help="run one stage of one run (what a sweep job runs; for your own scheduler)",
                           description="One stage of the runs these settings select: pretrain (resumes from its "
                           "checkpoint), finetune --scheme S (needs the stored encoder), or collect (finish ready "
                           "runs, rebuild results.csv, write the report). `bench sweep --dry-run` prints these.")
    stage.add_argument("stage", choices=("pretrain", "finetune", "collect"))
    stage.add_argument("--scheme", choices=SCHEMES, help="the finetune stage's scheme")
    stage.add_argument("--run-id", help="the run these settings must give (refused if they give another)")
    stage.add_argument("--methods", nargs="+", default=["all"], help="method names or 'all'")
    stage.add_argument("--force", action="store_true", help="pretrain: start the run afresh even if it is complete")
    stage.add_argument("--no-report", action="store_true", help="collect: do not write the report")
    _add_config_flags(stage)
    stage.set_defaults(handler=cmd_stage)


def _interrupt(signum, frame) -> None:
    """SIGTERM (a scheduler's or ``kill``'s) stops a run the way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 a run or the store failed, 2 bad input, 130 interrupted.

    Expected failures print one ``bench: error:`` line; ``--debug`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    progress.set_quiet(getattr(args, "quiet", False))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("bench: interrupted (completed runs and checkpoints are kept; rerun with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BAD_INPUT as error:
        return _error(args, error, 2)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line unless --debug
        return _error(args, error, 1)
    finally:
        signal.signal(signal.SIGTERM, previous)


# Errors that mean "the command's input is wrong" (exit 2); anything else is a failure (exit 1).
BAD_INPUT = (ConfigError, DatasetMissingError, CheckpointError, FileNotFoundError, ImportError)
# Failures whose message already says what is wrong and what to do: no traceback hint.
EXPECTED = (*BAD_INPUT, StoreError, RowError, DownloadError, DiskFullError)


def _error(args: argparse.Namespace, error: Exception, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        text = str(error).strip().splitlines()
        message = text[0] if text and isinstance(error, EXPECTED) else progress.error_line(error)
        hint = "" if isinstance(error, EXPECTED) else " (--debug shows the traceback)"
        print(f"bench: error: {message}{hint}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
