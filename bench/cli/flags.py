"""The flag groups several ``bench`` subcommands share: configuration overrides, method selection, dry
runs and the seeds × datasets product. One definition each, so ``run``, ``pretrain``, ``sweep`` and
``study`` accept the same flags with the same help."""

from __future__ import annotations

import argparse

from bench.choices import ATTACKS, DATASETS, DEVICES, POST_STAGES, PRESETS, PROTOCOLS, SCHEMES, TRACKERS


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (each overrides one field of the preset)")
    group.add_argument("--preset", default="smoke", help=f"settings bundle: {', '.join(PRESETS)} (default smoke)")
    group.add_argument(
        "--protocol", help=f"finetuning protocol: {', '.join(PROTOCOLS)} (default unified; docs/protocols.md)"
    )
    group.add_argument("--dataset", help=f"pretraining dataset: {', '.join(DATASETS)}")
    group.add_argument("--eval-dataset", help="finetune/evaluate on another dataset (transfer), e.g. stl10")
    group.add_argument("--data-dir", help="where datasets live (default ~/data)")
    group.add_argument(
        "--download",
        action="store_true",
        help="download missing torchvision datasets and AdvCL's released pseudo-labels (sha256-checked)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's forward in pretraining (pretrain.compile; the PGD inner loops)",
    )
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
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field by dotted name, e.g. pretrain.warmup_epochs=2",
    )
    group.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="method hyperparameter, e.g. alpha=0.3 or advcl-ip:adaptive_epochs=5",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def add_method_flags(parser: argparse.ArgumentParser, methods_help: str = "method names or 'all'") -> None:
    parser.add_argument("--methods", nargs="+", default=["all"], help=methods_help)
    parser.add_argument(
        "--post",
        choices=POST_STAGES[1:],
        default="",
        help="pp: each method, then DynACL++'s LP-AFT on K-means pseudo-labels before finetuning "
        "(runs as '<method>++', sharing the method's encoder; bench.methodkit.post)",
    )


def add_dry_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve, validate and print the plan, then stop (nothing loaded, fetched or trained; downloads listed)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --dry-run: one JSON object per run and scheme; alone (bench run): one JSON summary at the end",
    )


def add_report_flags(parser: argparse.ArgumentParser, when: str = "") -> None:
    """The report a run command writes at its end: none, or its tables without the figures (matplotlib draws
    each figure twice, PNG and PDF, about 0.6 s each; the tables take a fraction of a second). ``when``: the
    help's prefix where only some forms of the command write one (``bench stage``: collect)."""
    parser.add_argument("--no-report", action="store_true", help=f"{when}do not write the report afterwards")
    parser.add_argument(
        "--no-figures", action="store_true", help=f"{when}write the report's tables and pages but not its figures"
    )


def given_report_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """``add_report_flags``' flags as given, for a command line that writes the report elsewhere (a sweep's
    collect job)."""
    return tuple(flag for flag, on in (("--no-report", args.no_report), ("--no-figures", args.no_figures)) if on)


def add_product_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several runs (the plan is seeds × datasets × methods)")
    group.add_argument("--seeds", nargs="+", metavar="SEED", help="several seeds, e.g. --seeds 0 1 2 (not with --seed)")
    group.add_argument(
        "--datasets",
        nargs="+",
        metavar="DATASET",
        help="several pretraining datasets, e.g. --datasets cifar10 cifar100 (not with --dataset)",
    )


def add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="experiment file (YAML) holding these flags as keys (examples/*.yaml); flags given here win",
    )
    parser.add_argument(
        "--write-config",
        metavar="FILE",
        help="with --dry-run: write the resolved experiment (the file and the flags, methods expanded) as YAML",
    )


def add_track_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--track",
        action="extend",  # --track a b or --track a --track b; an experiment file's `track: [a, b]` (nargs "+")
        nargs="+",
        choices=TRACKERS,
        metavar="TRACKER",
        help="live tracking, one or more (repeatable): tensorboard, mlflow, wandb (each optional: "
        "pip install -e '.[track]'), besides the default local log runs/<id>/metrics.jsonl; 'none' for no "
        "tracking (README 'Live tracking')",
    )
