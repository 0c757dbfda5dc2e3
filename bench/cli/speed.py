"""``bench speed``: what the command does (its parser is in ``bench.cli.app``); the measuring is
``bench.products.speed``, the tables ``bench.products.speed_report``."""

from __future__ import annotations

import argparse

from bench.choices import SPEED_STAGES
from bench.cli.commands import build_request
from bench.engine import progress
from bench.engine.device import resolve_device
from bench.errors import ConfigError, did_you_mean
from bench.methodkit import registry
from bench.products import speed_report
from bench.products.speed import QUICK, QUICK_EXTRA, QUICK_EXTRA_METHODS, QUICK_EXTRA_STEPS, QUICK_METHODS, run_speed
from bench.products.speed_measure import SpeedOptions
from bench.products.speed_report import SpeedContext, speed_csv, speed_markdown
from bench.runs.plan import build_plan
from bench.store.atomic import write_atomic
from bench.store.provenance import code_version, now


def _selected(plan) -> list:
    """The plan's runs of the selected methods: a teacher run the plan adds (DeACL's SimCLR) is not
    measured unless selected; ``bench speed`` gives a distilling method an untrained teacher."""
    names = set(registry.resolve(plan.base.methods))
    return [run for run in plan.runs if run.method in names]


def cmd_speed(args: argparse.Namespace) -> int:
    """``bench speed``: fast path vs reference-style path, side by side (bench.products.speed); writes speed.csv/md."""
    import dataclasses
    import shlex

    methods = tuple(m for m in ",".join(args.methods or (QUICK_METHODS if args.quick else ["all"])).split(",") if m)
    plan = build_plan(build_request(args, methods))
    options = dataclasses.replace(QUICK if args.quick else SpeedOptions(), reference=not args.no_reference)
    if args.no_autoattack:
        options = dataclasses.replace(options, autoattack="")
    stages = tuple(stage for stage in ",".join(args.stages).split(",") if stage)
    for stage in stages:
        if stage not in SPEED_STAGES:
            hint = did_you_mean(stage, SPEED_STAGES)
            raise ConfigError(f"--stages {stage!r} is invalid{hint}: allowed {list(SPEED_STAGES)}")
    options = dataclasses.replace(options, stages=stages or SPEED_STAGES)
    for name in ("warmup", "steps", "repeats", "max_repeats", "eval_images", "loader_workers"):
        if getattr(args, name) is not None:
            options = dataclasses.replace(options, **{name: _count(getattr(args, name), name)})
    extra = []
    if args.quick:
        extra_request = build_request(args, QUICK_EXTRA_METHODS)
        extra_request.overrides.update(QUICK_EXTRA)
        extra = _selected(build_plan(extra_request))
    epoch_runs = _selected(build_plan(build_request(args, tuple(args.epoch)))) if args.epoch else []
    device = resolve_device(plan.base.device)
    rows = run_speed(
        _selected(plan),
        plan.base,
        options,
        device=device,
        synthetic=_count(args.synthetic or 0, "synthetic"),
        extra=extra,
        extra_options=dataclasses.replace(options, steps=QUICK_EXTRA_STEPS),
        epoch_runs=epoch_runs,
    )
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    context = SpeedContext(
        device.type,
        name,
        plan.base.preset,
        plan.base.data.image_size,
        torch.__version__,
        torch.get_num_threads(),
        code_version(),
        now(),
        "bench speed " + " ".join(shlex.quote(arg) for arg in args.argv),
        device.type == "cpu",
    )
    csv_path = write_atomic(plan.results_dir / "speed.csv", speed_csv(rows, context))
    md_path = write_atomic(plan.reports_dir / "speed.md", speed_markdown(rows, context))
    for key, line in speed_report.describe(rows).items():
        progress.log(f"  {key}: {line}")
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
