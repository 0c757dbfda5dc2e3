"""The ``bench`` command: run, list, pretrain, finetune, evaluate, report, reproduce, compare, study, export,
collect, status, sweep, stage, speed.

Every configuration field can be overridden (``--set pretrain.lr=0.5``), the common ones by short flags. A bad
value exits with status 2 and one line naming it and the allowed ones, before any work: nothing is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from bench.choices import CHECKPOINT_FORMATS, LAUNCHERS, SCHEMES, SPEED_STAGES
from bench.cli.flags import (
    add_config_flags,
    add_dry_run_flags,
    add_experiment_flags,
    add_method_flags,
    add_product_flags,
    add_report_flags,
    add_track_flag,
)
from bench.cli.parsing import OneLineParser, VersionAction, command_handler
from bench.cli.study import add_study_parser
from bench.errors import (
    CheckpointError,
    ConfigError,
    DatasetMissingError,
    DiskFullError,
    DownloadError,
    RowError,
    StoreError,
)


def run_stage_command(argv: list[str]) -> int:
    """``bench stage ...`` inside a scheduler job: no signal handlers of its own (the scheduler's
    stay in place, e.g. submitit's requeue on preemption) and errors propagate as the job's failure."""
    args = build_parser().parse_args(argv)
    if args.command != "stage":
        raise ConfigError(f"command {args.command!r} is invalid inside a sweep job: allowed 'stage'")
    progress = _progress()
    progress.set_quiet(args.quiet)
    progress.set_bars(False)
    return args.handler(args)


def _with_experiment(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace):
    from bench.cli.experiment import with_experiment  # deferred: torch (an experiment file resolves to a plan)

    return with_experiment(parser, argv, args)


def _progress():
    """``bench.engine.progress``, once a command runs: it loads rich, half of a bare ``--help``'s time."""
    from bench.engine import progress  # deferred: rich

    return progress


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="bench",
        description="acl-bench: pretrain, finetune (SLF/ALF/AFF), attack (PGD-20, AutoAttack) and report "
        "adversarial contrastive learning methods in one harness.",
    )
    parser.add_argument("--version", action=VersionAction, help="package version and git commit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="pretrain, finetune and evaluate methods, then write the report")
    add_method_flags(run, "method names or 'all' (see `bench list`)")
    run.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    add_report_flags(run)
    add_dry_run_flags(run)
    add_experiment_flags(run)
    add_config_flags(run)
    add_track_flag(run)
    add_product_flags(run)
    run.set_defaults(handler=command_handler("cmd_run"))

    repro = sub.add_parser(
        "reproduce",
        help="run the rows of a published table under its protocol and write them "
        "beside the published numbers with Δ (--dataset: one of the table's, default all)",
    )
    repro.add_argument("table", help="ainfonce-table1 | robustssl")
    repro.add_argument("--seeds", nargs="+", metavar="SEED", help="seeds to run, e.g. --seeds 0 1 2 (default 0)")
    repro.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    repro.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    add_dry_run_flags(repro)
    add_config_flags(repro)
    add_track_flag(repro)
    repro.set_defaults(handler=command_handler("cmd_reproduce"), preset="paper")

    pre = sub.add_parser("pretrain", help="pretrain methods and store their encoders (no finetuning)")
    add_method_flags(pre)
    pre.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    pre.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    add_config_flags(pre)
    add_track_flag(pre)
    add_product_flags(pre)
    pre.set_defaults(handler=command_handler("cmd_pretrain"))

    _add_sweep_parser(sub)
    _add_stage_parser(sub)

    for command, text in (
        ("finetune", "finetune a stored or released encoder with SLF/ALF/AFF and evaluate it"),
        ("evaluate", "evaluate an encoder checkpoint or a RobustBench model under our protocol"),
    ):
        ev = sub.add_parser(command, help=text)
        source = ev.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="encoder checkpoint file")
        source.add_argument("--robustbench-model", help="RobustBench model name (needs acl-bench[robustbench])")
        ev.add_argument("--format", default="bench", help="checkpoint format: " + ", ".join(CHECKPOINT_FORMATS))
        ev.add_argument(
            "--branch", help="BN branch to load from a multi-BN checkpoint (default: the format's adversarial one)"
        )
        ev.add_argument(
            "--name",
            help="method name to store the results under (default: the checkpoint's recorded "
            "method, else FORMAT:FILE-STEM)",
        )
        ev.add_argument(
            "--pretrain-dataset",
            help="dataset the encoder was pretrained on, for the tables (default: "
            "recorded in acl-bench checkpoints, else 'unknown')",
        )
        ev.add_argument("--force", action="store_true", help="re-evaluate even if stored")
        ev.add_argument("--resume", action="store_true", help="keep the schemes an interrupted run finished")
        add_report_flags(ev)
        add_config_flags(ev)
        ev.set_defaults(handler=command_handler("cmd_evaluate"))

    rep = sub.add_parser("report", help="write tables and plots from results/results.csv (never trains)")
    rep.add_argument("--paper", action="store_true", help="also lay out the A-InfoNCE paper's Table 1 with references")
    rep.add_argument("--results-dir", default="results", help="results store (default results/)")
    rep.add_argument("--reports-dir", default="reports", help="output directory (default reports/)")
    rep.add_argument(
        "--curve-methods",
        nargs="+",
        metavar="METHOD",
        help="methods drawn in the accuracy-vs-ε plot (default: every method with ε-curve rows)",
    )
    rep.add_argument("--no-figures", action="store_true", help="write the tables and pages but not the figures")
    rep.add_argument("--quiet", action="store_true", help="do not print the table")
    rep.add_argument("--json", action="store_true", help="print the written files as one JSON object (no table)")
    rep.set_defaults(handler=command_handler("cmd_report"))

    speed = sub.add_parser("speed", help="throughput of the fast path vs a reference-style path (speed.csv, speed.md)")
    speed.add_argument(
        "--methods",
        nargs="+",
        help="method names or 'all' (default all; with --quick one per family: simclr acl rocl advcl-ip)",
    )
    speed.add_argument(
        "--quick",
        action="store_true",
        help="few short repeats, 32 evaluation images, APGD-CE for "
        "AutoAttack, and ResNet-18 at batch 32 for acl and advcl-ip (minutes on a laptop CPU)",
    )
    speed.add_argument("--warmup", help="untimed steps before the repeats (default 2)")
    speed.add_argument("--steps", help="steps per timed repeat (default 3)")
    speed.add_argument("--repeats", help="timed rounds of every path, alternating (default 3)")
    speed.add_argument(
        "--max-repeats", help="more rounds, up to this many, while a fast/reference ratio is unstable (default 12)"
    )
    speed.add_argument("--eval-images", help="images of the PGD-20/AutoAttack measurement, 0 = skip (default 256)")
    speed.add_argument(
        "--loader-workers", help="DataLoader workers of the reference-style path (default min(8, cores))"
    )
    speed.add_argument("--synthetic", help="use N random CIFAR-shaped images instead of the dataset (no download)")
    speed.add_argument(
        "--epoch", nargs="+", default=[], metavar="METHOD", help="also time one whole epoch of these methods' fast path"
    )
    speed.add_argument(
        "--stages",
        nargs="+",
        default=[],
        help=f"what to measure: {', '.join(SPEED_STAGES)} (default all; epoch needs --epoch)",
    )
    speed.add_argument("--no-reference", action="store_true", help="measure the fast path only")
    speed.add_argument("--no-autoattack", action="store_true", help="skip the AutoAttack measurement")
    add_config_flags(speed)
    speed.set_defaults(handler=command_handler("cmd_speed"))

    lst = sub.add_parser("list", help="list the registered methods with a one-line description")
    lst.add_argument("--json", action="store_true", help="one JSON object per method")
    lst.set_defaults(handler=command_handler("cmd_list"))

    cmp = sub.add_parser(
        "compare",
        help="run ids: do two trained classifiers differ (McNemar, MDD)? methods: does the method differ (seeds)?",
    )
    cmp.add_argument("base", help="a run id or run directory (classifier level), or a method name (method level)")
    cmp.add_argument("variant", help="the variant: a run id or run directory, or a method name")
    cmp.add_argument("--scheme", action="append", metavar="SCHEME", help="only these schemes (default: all shared)")
    cmp.add_argument("--attack", action="append", metavar="ATTACK", help="only these attacks (default: all shared)")
    cmp.add_argument("--results-dir", default="results", help="results store (default results/)")
    cmp.set_defaults(handler=command_handler("cmd_compare"))
    add_study_parser(sub, stage_entry=run_stage_command)  # submitit jobs re-enter the CLI's stage entry

    exp = sub.add_parser(
        "export",
        help="write a finetuned classifier as TorchScript, a RobustBench-format state "
        "dict or safetensors, with a JSON sidecar (method, arch, normalisation, run id, metrics)",
    )
    exp.add_argument("run_id", help="a run id from results/results.csv")
    exp.add_argument("--scheme", default="AFF", help="which finetuned classifier: SLF, ALF or AFF")
    exp.add_argument("--out", required=True, help="output file, or a directory to write RUN_ID-SCHEME.pt into")
    exp.add_argument(
        "--format",
        default="torchscript",
        choices=("torchscript", "robustbench", "safetensors"),
        help="torchscript: self-contained module (torch only); robustbench: {'state_dict': ...} as "
        "robustbench.utils.load_model reads; safetensors: tensors only (needs acl-bench[export]). "
        "Load with bench.products.export.load_exported(path) (torchscript: allow_torchscript=True, it runs code)",
    )
    exp.add_argument("--results-dir", default="results", help="results store (default results/)")
    exp.set_defaults(handler=command_handler("cmd_export"))

    col = sub.add_parser("collect", help="rebuild results/results.csv from the run directories (and merge stores)")
    col.add_argument("--results-dir", default="results", help="results store (default results/)")
    col.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        metavar="DIR",
        help="other results stores to merge in first (their complete runs are copied)",
    )
    col.add_argument("--quiet", action="store_true", help="no status lines")
    col.set_defaults(handler=command_handler("cmd_collect"))

    stat = sub.add_parser("status", help="state of every run in the store (complete, failed, stage reached)")
    stat.add_argument("--results-dir", default="results", help="results store (default results/)")
    stat.add_argument("--json", action="store_true", help="one JSON object per run")
    stat.set_defaults(handler=command_handler("cmd_status"))
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _add_sweep_parser(sub) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="seeds × datasets × methods as scheduler jobs (SLURM via submitit) or locally",
        description="Run a plan's stages (pretrain, then one finetune-and-evaluate job per scheme, "
        "then collect + report) as jobs. Complete runs are skipped; interrupted ones continue.",
    )
    add_method_flags(sweep)
    sweep.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: this machine's pool (as bench run); slurm: job arrays through submitit; "
        "submitit-local: submitit's local executor (the slurm code path, on this machine)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the jobs and their command lines; submit nothing")
    sweep.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per job")
    sweep.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    add_report_flags(sweep)
    add_experiment_flags(sweep)
    add_config_flags(sweep)
    add_product_flags(sweep)
    cluster = sweep.add_argument_group("scheduler (slurm, submitit-local)")
    cluster.add_argument(
        "--jobs-dir", help="submitit's logs and job files (default RESULTS_DIR/_jobs; shared filesystem on a cluster)"
    )
    cluster.add_argument(
        "--timeout-min",
        type=int,
        default=24 * 60,
        help="time limit of a pretrain or finetune job; a timed-out job requeues and resumes",
    )
    cluster.add_argument("--max-timeouts", type=int, default=3, help="requeues after timeouts before a job fails")
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument("--account", help="SLURM account")
    cluster.add_argument("--constraint", help="SLURM node constraint, e.g. a100")
    cluster.add_argument("--qos", help="SLURM quality of service")
    cluster.add_argument(
        "--gpus-per-node", type=int, help="GPUs per pretrain/finetune job (default 1 on SLURM, 0 locally)"
    )
    cluster.add_argument("--cpus-per-task", type=int, help="CPU cores per job")
    cluster.add_argument("--mem-gb", type=float, help="memory per job")
    cluster.add_argument(
        "--array-parallelism",
        type=int,
        default=0,
        help="jobs of one array running at once (0: SLURM's limit; locally one per core)",
    )
    # the jobs' entry, handed to the runs level
    sweep.set_defaults(handler=command_handler("cmd_sweep"), stage_entry=run_stage_command)


def _add_stage_parser(sub) -> None:
    stage = sub.add_parser(
        "stage",
        help="run one stage of one run (what a sweep job runs; for your own scheduler)",
        description="One stage of the runs these settings select: pretrain (resumes from its "
        "checkpoint), finetune --scheme S (needs the stored encoder), or collect (finish ready "
        "runs, rebuild results.csv, write the report). `bench sweep --dry-run` prints these.",
    )
    stage.add_argument("stage", choices=("pretrain", "finetune", "collect"))
    stage.add_argument("--scheme", choices=SCHEMES, help="the finetune stage's scheme")
    stage.add_argument("--run-id", help="the run these settings must give (refused if they give another)")
    add_method_flags(stage)
    stage.add_argument("--force", action="store_true", help="pretrain: start the run afresh even if it is complete")
    add_report_flags(stage, when="collect: ")
    add_config_flags(stage)
    stage.set_defaults(handler=command_handler("cmd_stage"))


def _interrupt(signum, frame) -> None:
    """SIGTERM (a scheduler's or ``kill``'s) stops a run the way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 a run or the store failed, 2 bad input, 130 interrupted.

    Expected failures print one ``bench: error:`` line; ``--debug`` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    _progress().set_quiet(getattr(args, "quiet", False))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if getattr(args, "config", None) or getattr(args, "write_config", None):
            args = _with_experiment(parser, argv, args)  # --config FILE: its keys under the flags given here
            _progress().set_quiet(getattr(args, "quiet", False))
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"bench: interrupted (completed runs and checkpoints are kept; {_resume_hint(args)})", file=sys.stderr)
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


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue: ``--resume`` where the command has it; a sweep (or a stage, a study) resumes by
    itself and refuses the flag, so it is told to rerun the same command (review 2, D15)."""
    return "rerun with --resume" if hasattr(args, "resume") else "rerun the same command: it continues them"


def _error(args: argparse.Namespace, error: Exception, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        text = str(error).strip().splitlines()
        message = text[0] if text and isinstance(error, EXPECTED) else _progress().error_line(error)
        message = message.replace("rerun with --resume", _resume_hint(args))
        hint = "" if isinstance(error, EXPECTED) else " (--debug shows the traceback)"
        print(f"bench: error: {message}{hint}", file=sys.stderr)
    return status
