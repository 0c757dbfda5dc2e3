"""Sweeps (issue 11): seeds × datasets plans, stages as jobs, submitit launchers, requeue and resume.

The submitit-local tests run real job processes on the tiny smoke settings; the SLURM test runs
submitit's own SLURM executor against stand-in ``sbatch``/``srun`` commands and reads the batch
files it wrote, so the submission (arrays, dependencies, parameters) is tested without a cluster.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
from processes import (
    LINUX,
    ForkedBench,
    all_gone,
    descendants,
    jobs_in_this_process,
    kill_left,
    torch_threads,
    wait_until,
)
from tiny_run import TINY

from bench.cli.app import build_parser, main
from bench.cli.commands import build_request, selected_methods
from bench.config import ConfigError
from bench.engine.device import available_cores
from bench.runs import sweep as sweep_module
from bench.runs.collect import MEASURED
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore
from bench.store.rows import COLUMNS


def _dirs(root: Path) -> list[str]:
    return ["--results-dir", str(root / "r"), "--reports-dir", str(root / "rep")]


def _measured(store: ResultsStore) -> dict[str, list]:
    """run id → its rows' measured columns, from the index."""
    table: dict[str, list] = {}
    for row in store.read_rows():
        table.setdefault(row.run_id, []).append(tuple(getattr(row, column) for column in MEASURED))
    return table


def _dry_run(root: Path, *args: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["sweep", *_dirs(root), *TINY, "--dry-run", "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# --------------------------------------------------------------------------- plans


def test_seeds_and_datasets_lists_give_the_run_ids_of_single_runs(tmp_path, capsys):
    product = build_plan(RunRequest(methods=("simclr", "acl"), seeds=("0", "2"), datasets=("digits", "cifar10")))
    singles = [
        run.run_id
        for seed in ("0", "2")
        for dataset in ("digits", "cifar10")
        for run in build_plan(
            RunRequest(methods=("simclr", "acl"), overrides={"seed": seed, "data.name": dataset})
        ).runs
    ]
    assert [run.run_id for run in product.runs] == singles and len(set(singles)) == 8
    with pytest.raises(ConfigError, match="--seeds 0 0 is invalid: run .* comes twice"):
        build_plan(RunRequest(methods=("acl",), seeds=("0", "0")))
    for both in (["--seed", "1", "--seeds", "0", "1"], ["--dataset", "digits", "--datasets", "digits"]):
        code = main(["run", "--methods", "acl", *_dirs(tmp_path), "--quiet", *both])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "allowed one of the two forms" in err, err
    assert not (tmp_path / "r").exists()


def test_dry_run_json_lists_every_job_and_skips_complete_runs(tmp_path, capsys):
    lines = _dry_run(tmp_path, "--methods", "simclr", "acl", "--seeds", "0", "1", "--schemes", "SLF,ALF", capsys=capsys)
    assert [line["stage"] for line in lines] == ["pretrain", "finetune", "finetune"] * 4 + ["collect"]
    assert {(line["method"], line["scheme"]) for line in lines if line["stage"] == "finetune"} == {
        (method, scheme) for method in ("simclr", "acl") for scheme in ("SLF", "ALF")
    }
    for line in lines[:-1]:
        assert line["job"].startswith(line["run_id"]) and set(line) == {
            "job",
            "run_id",
            "method",
            "stage",
            "scheme",
            "after",
            "command",
        }
        assert line["after"] == ([] if line["stage"] == "pretrain" else [f"{line['run_id']}/pretrain"])
        args = build_parser().parse_args(shlex.split(line["command"])[1:])  # the command rebuilds exactly this run
        assert args.command == "stage" and args.stage == line["stage"] and args.scheme == line["scheme"]
        (run,) = build_plan(build_request(args, selected_methods(args))).runs
        assert run.run_id == args.run_id == line["run_id"]
    assert lines[-1]["after"] == [line["job"] for line in lines[:-1]]
    assert shlex.split(lines[-1]["command"])[-1] == "--no-figures"  # TINY's report flag, for the collect job's report
    done = ResultsStore(tmp_path / "r").run(lines[0]["run_id"])
    done.write_json(done.done, {"finished": "now"})  # a complete run has no job, unless --force
    again = _dry_run(tmp_path, "--methods", "simclr", "acl", "--seeds", "0", "1", "--schemes", "SLF,ALF", capsys=capsys)
    assert len(again) == len(lines) - 3 and lines[0]["run_id"] not in {line["run_id"] for line in again}
    forced = _dry_run(
        tmp_path, "--methods", "simclr", "acl", "--seeds", "0", "1", "--schemes", "SLF,ALF", "--force", capsys=capsys
    )
    assert len(forced) == len(lines) and "--force" in shlex.split(forced[0]["command"])
    assert main(["sweep", *_dirs(tmp_path), "--json", "--quiet"]) == 2
    assert "--json is invalid without --dry-run" in capsys.readouterr().err
    stage = shlex.split(lines[4]["command"])[1:]  # a finetune job's command (second run), checked before any work
    assert main([*stage[:2], *stage[4:], "--quiet"]) == 2  # without --scheme
    assert main([*stage, "--set", "finetune.epochs=2", "--quiet"]) == 2  # settings that give another run id
    err = capsys.readouterr().err.splitlines()
    assert "--scheme is missing" in err[0] and f"--run-id {lines[4]['run_id']} is invalid" in err[1]
    assert lines[4]["stage"] == "finetune" and not ResultsStore(tmp_path / "r").run(lines[4]["run_id"]).path.exists()


# --------------------------------------------------------------------------- stages ≡ bench run


def _masked(path: Path) -> list[list[str]]:
    """A rows file with the columns that differ between two executions (time stamp, wall time) blanked."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    masked = [COLUMNS.index("timestamp"), COLUMNS.index("wall_s")]
    return [
        [("" if index in masked and number else value) for index, value in enumerate(row)]
        for number, row in enumerate(rows)
    ]


@pytest.mark.e2e
def test_stages_run_separately_and_in_any_order_give_the_rows_of_bench_run(tmp_path):
    from bench.runs.stages import DataCache, StageContext, finetune_stage, finish_stage, pretrain_stage

    torch.set_num_threads(1)  # one thread: cheap on a shared 2-core machine (the conftest fixture restores 2)
    extra = ["--methods", "simclr", "--jobs", "1", "--schemes", "SLF,ALF", "--set", "finetune.alf_steps=1"]
    assert main(["run", *_dirs(tmp_path / "run"), *TINY, "--no-report", *extra]) == 0
    args = build_parser().parse_args(["run", *_dirs(tmp_path / "stages"), *TINY, *extra])
    (run,) = build_plan(build_request(args, selected_methods(args))).runs
    store = ResultsStore(tmp_path / "stages" / "r")
    device = torch.device("cpu")
    pretrain_stage(run, StageContext(store, device, DataCache(device)))
    for scheme in ("ALF", "SLF"):  # the other order, each in a fresh context after other random draws
        torch.rand(1000)
        assert finetune_stage(run, scheme, StageContext(store, device, DataCache(device), resume=True))
        assert not (store.run(run.run_id).done.exists())
    assert finish_stage(store.run(run.run_id), required=True)
    store.collect()
    reference = ResultsStore(tmp_path / "run" / "r")
    assert _masked(store.run(run.run_id).rows) == _masked(reference.run(run.run_id).rows)
    assert _masked(store.table) == _masked(reference.table)
    schemes = [row.scheme for row in store.read_rows()]
    assert sorted(set(schemes), key=schemes.index) == ["SLF", "ALF"]  # rows.csv in the config's scheme order


# --------------------------------------------------------------------------- submitit-local


def _signal_when_pretraining(store: ResultsStore, signals: dict[str, int], step: int = 2) -> threading.Thread:
    """Send each run (id prefix → signal) its signal once its pretraining has checkpointed ``step`` steps,
    to the process running it (its pid is in progress.json)."""

    def watch() -> None:
        pending, deadline = dict(signals), time.time() + 600
        while pending and time.time() < deadline:
            for run in store.run_dirs():
                prefix = next((name for name in pending if run.run_id.startswith(name)), None)
                record = run.read_json_or_none(run.progress) if prefix else None
                if isinstance(record, dict) and record.get("stage") == "pretraining" and record["step"] >= step:
                    os.kill(record["pid"], pending.pop(prefix))
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


SETTINGS = [*TINY, "--methods", "simclr", "acl", "--epochs", "3", "--set", "pretrain.checkpoint_every=1", "--no-report"]
PARALLEL_JOBS = 2
LOCAL_SWEEP = ["--launcher", "submitit-local", "--array-parallelism", str(PARALLEL_JOBS), *SETTINGS]
JOB_THREADS = max(1, available_cores() // PARALLEL_JOBS)  # a local job's torch threads (bench.runs.sweep)


def _jobs_log(results: Path) -> str:
    return "".join(path.read_text() for path in (results / "_jobs").glob("*_log.err"))


def _pretraining_anew(store: ResultsStore, prefix: str, before: int) -> bool:
    """The run ``prefix``'s pretraining is under way in a process other than ``before``."""
    (run,) = [run for run in store.run_dirs() if run.run_id.startswith(prefix)]
    record = run.read_json_or_none(run.progress)
    return isinstance(record, dict) and record.get("stage") == "pretraining" and record["pid"] != before


def _stop_a_launcher(argv: list[str], store: ResultsStore, stop: signal.Signals, before: int) -> int:
    """``bench ARGV`` (a sweep) as its own process, stopped by ``stop`` once simclr's pretraining job runs again;
    every job of it must end. Returns the pid of the job it stopped."""
    launcher, jobs = ForkedBench(*argv), []
    try:
        wait_until(lambda: _pretraining_anew(store, "simclr", before), 180, "simclr's pretraining job")
        jobs = descendants(launcher.pid)  # submitit's controller and its task, kept: orphans have no parent to find
        assert len(jobs) >= 2, jobs
        os.kill(launcher.pid, stop)
        launcher.wait(timeout=60)  # not communicate(): orphaned jobs would hold its pipes open
        assert all_gone(jobs, 20), f"jobs still running after {stop!r} of their sweep"
    finally:
        kill_left([*([launcher.pid] if launcher.poll() is None else []), *jobs])
    err = launcher.stderr.read().decode()
    if stop == signal.SIGTERM:
        assert launcher.returncode == 130 and "interrupted" in err, err[-2000:]
    (simclr,) = [run for run in store.run_dirs() if run.run_id.startswith("simclr")]
    return simclr.read_json_or_none(simclr.progress)["pid"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc and pgrep to follow the jobs")
def test_a_local_sweep_killed_preempted_stopped_and_rerun_gives_the_rows_of_bench_run(tmp_path, capsys, monkeypatch):
    """One submitit-local sweep through every way it can end, in one store, since each of its job processes
    costs seconds of start-up (torch):

    1. simclr's pretraining job is killed (SIGKILL) mid-way: the sweep reports it and exits 1; acl's is
       preempted (SIGUSR2, submitit's signal): it requeues itself and finishes from its checkpoint in the
       same sweep.
    2. Reliability review D7: a rerun's launcher stopped by ``kill`` (exit 130, one line) and then one stopped by
       ``kill -9`` (no handler runs): their jobs end too (they trained on as orphans, and a rerun started the
       same jobs beside them); a job ends itself once its launcher is gone.
    3. The next rerun submits simclr's three jobs only and resumes it from its checkpoint: each pretraining curve
       has every step exactly once, every row is there once, and the rows equal those of ``bench run`` with the
       same settings. Its jobs run in this process, through the CLI's stage entry (submitit's executor ran the
       jobs of 1 and 2, acl's resume from its checkpoint in a new job process included; each job process costs
       about 5 s of CPU, torch and its first optimiser step imported, before any work).
    4. The same sweep again submits nothing."""
    root = tmp_path / "sweep"
    store = ResultsStore(root / "r")
    sweep = ["sweep", *_dirs(root), *LOCAL_SWEEP]
    watcher = _signal_when_pretraining(store, {"simclr": signal.SIGKILL, "acl": signal.SIGUSR2})
    assert main(sweep) == 1
    watcher.join(timeout=5)
    err = capsys.readouterr().err
    (killed,) = [run for run in store.run_dirs() if run.run_id.startswith("simclr")]
    (preempted,) = [run for run in store.run_dirs() if run.run_id.startswith("acl")]
    assert f"run {killed.run_id} (simclr) failed: JobDied" in err and killed.failure_is_resumable()
    assert preempted.is_complete() and {row.method for row in store.read_rows()} == {"acl"}
    assert "resumed acl from step" in _jobs_log(root / "r") and "this job is preempted" in _jobs_log(root / "r")

    stopped = killed.read_json_or_none(killed.progress)["pid"]
    for stop in (signal.SIGTERM, signal.SIGKILL):
        stopped = _stop_a_launcher(sweep, store, stop, stopped)

    submitted = []  # at a job's thread count
    monkeypatch.setattr(sweep_module, "run_submitit_local", jobs_in_this_process(submitted, JOB_THREADS))
    capsys.readouterr()
    assert main(sweep) == 0
    stages = [(job.run_id, job.stage) for job in submitted]
    assert stages == [(killed.run_id, "pretrain"), (killed.run_id, "finetune"), ("", "collect")], stages
    assert "resumed simclr from step" in capsys.readouterr().err  # this rerun resumed too
    for run in (killed, preempted):
        steps = [int(row["step"]) for row in csv.DictReader(run.history.open())]
        assert steps == list(range(3 * (1438 // 256))), run.run_id  # every step once: resumed, never doubled
    rows = store.read_rows()
    keys = [(row.run_id, row.scheme, row.attack, row.metric, row.epsilon) for row in rows]
    assert len(keys) == len(set(keys)) and {row.method for row in rows} == {"simclr", "acl"}
    assert sorted(keys) == sorted(
        (row.run_id, row.scheme, row.attack, row.metric, row.epsilon)
        for run in (killed, preempted)
        for row in run.read_rows()
    )
    environment = json.loads(preempted.config.read_text())["environment"]  # written in a submitit job
    assert environment["scheduler"] == "submitit-local" and environment["job_id"] and environment["hostname"]

    assert main(sweep) == 0 and len(submitted) == 3  # the same sweep again submits nothing

    with torch_threads(JOB_THREADS):  # bench run with the same settings, in this process at the jobs' thread count
        assert main(["run", *_dirs(tmp_path / "run"), *SETTINGS, "--jobs", "1"]) == 0
    assert _measured(store) == _measured(ResultsStore(tmp_path / "run" / "r")) and len(_measured(store)) == 2


class _LocalJob:
    """What ``sweep._job_error`` reads of a submitit local job: done after ``polls`` checks, maybe a result file,
    a result that may raise."""

    def __init__(self, tmp_path: Path, polls: int, result_file: bool, raises: Exception | None = None):
        self.job_id, self.checks, self.polls, self.raises = "77", 0, polls, raises
        self.paths = type("Paths", (), {"result_pickle": tmp_path / "77_result.pkl", "stderr": tmp_path / "77.err"})
        tmp_path.mkdir(exist_ok=True)
        if result_file:
            self.paths.result_pickle.write_bytes(b"")

    def done(self) -> bool:
        self.checks += 1
        return self.checks > self.polls

    def result(self) -> None:
        if self.raises:
            raise self.raises


def test_a_local_job_s_end_is_read_once_it_is_done_and_one_without_a_result_died(tmp_path, monkeypatch):
    from submitit.core.utils import FailedJobError

    monkeypatch.setattr(sweep_module, "LOCAL_POLL_S", 0.0)
    succeeded = _LocalJob(tmp_path / "ok", polls=3, result_file=True)
    assert sweep_module._job_error(succeeded) == "" and succeeded.checks == 4  # waited until done
    killed = _LocalJob(
        tmp_path / "killed", polls=0, result_file=False, raises=AssertionError("result() waits 15 s first")
    )
    assert sweep_module._job_error(killed).startswith("JobDied: job 77 ended without a result")
    failed = _LocalJob(tmp_path / "failed", polls=0, result_file=True, raises=FailedJobError("boom"))
    assert sweep_module._job_error(failed) == f"job 77 failed (log: {tmp_path / 'failed' / '77.err'})"


# --------------------------------------------------------------------------- SLURM, without a cluster


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    """Stand-ins for srun (presence only) and sbatch: keep each batch file, answer like sbatch."""
    bin_dir.mkdir()
    record.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sacct": "#!/bin/sh\nexit 0\n",
        "sbatch": f"""#!/bin/sh
n=$(ls {record} | wc -l)
id=$((4000 + n))
cp "$1" {record}/$id.sh
echo "Submitted batch job $id"
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _sbatch_flags(path: Path) -> dict[str, str]:
    flags = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            name, _, value = line.removeprefix("#SBATCH --").partition("=")
            flags[name] = value
    return flags


def test_slurm_submission_builds_arrays_and_task_wise_dependencies(tmp_path, monkeypatch, capsys):
    from submitit.core.utils import pickle_load

    record = tmp_path / "sbatch"
    _fake_slurm(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    product = ["--methods", "simclr", "acl", "--seeds", "0", "1", "--schemes", "SLF,ALF"]
    lines = _dry_run(tmp_path, *product, capsys=capsys)
    cluster = [
        "--launcher",
        "slurm",
        "--partition",
        "gpu",
        "--account",
        "lab",
        "--constraint",
        "a100",
        "--timeout-min",
        "90",
        "--array-parallelism",
        "2",
        "--cpus-per-task",
        "4",
        "--mem-gb",
        "32",
    ]
    assert main(["sweep", *_dirs(tmp_path), *TINY, *product, *cluster]) == 0
    batches = {int(path.stem): _sbatch_flags(path) for path in record.glob("*.sh")}
    assert sorted(batches) == [4000, 4001, 4002, 4003]  # pretrain array, SLF array, ALF array, collect
    pretrain, slf, alf, collect = (batches[key] for key in sorted(batches))
    for flags in (pretrain, slf, alf):
        assert flags["array"] == "0-3%2" and flags["partition"] == "gpu" and flags["account"] == "lab"
        assert flags["constraint"] == "a100" and flags["time"] == "90" and flags["gpus-per-node"] == "1"
        assert flags["cpus-per-task"] == "4" and flags["mem"] == "32GB" and flags["signal"] == "USR2@90"
    assert "dependency" not in pretrain and pretrain["job-name"] == "bench-pretrain"
    assert slf["dependency"] == alf["dependency"] == "aftercorr:4000" and slf["kill-on-invalid-dep"] == "yes"
    assert collect["dependency"] == "afterany:4000:4001:4002"
    assert "array" not in collect and "gpus-per-node" not in collect and collect["time"] == "60"
    # each task runs the command line --dry-run printed for that job
    jobs_dir = tmp_path / "r" / "_jobs"
    submitted = {}
    for array, stage_lines in ((4000, lines[0::3]), (4001, lines[1::3]), (4002, lines[2::3])):
        for task, line in enumerate(stage_lines[:4]):
            delayed = pickle_load(jobs_dir / f"{array}_{task}_submitted.pkl")
            submitted[line["job"]] = ("bench", *delayed.args[0])
            assert type(delayed.function).__name__ == "StageJob"
            assert delayed.function.entry.__module__ == "bench.cli.app"  # the CLI's stage entry, by reference
    submitted["collect"] = ("bench", *pickle_load(jobs_dir / "4003_submitted.pkl").args[0])
    printed = {line["job"]: line["command"] for line in lines}
    assert {key: shlex.join(argv) for key, argv in submitted.items()} == printed


def test_a_requeued_forced_job_continues_instead_of_restarting():
    from bench.cli.app import run_stage_command
    from bench.runs.sweep import StageJob

    argv = ["stage", "pretrain", "--run-id", "x", "--force"]
    requeued = StageJob(run_stage_command).checkpoint(argv)
    assert requeued.args == (["stage", "pretrain", "--run-id", "x"],) and isinstance(requeued.function, StageJob)
    assert requeued.function.entry is run_stage_command


def test_environment_records_the_scheduler_job_host_and_world_size(monkeypatch):
    from bench.store.provenance import environment

    for name in (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SUBMITIT_LOCAL_JOB_ID",
        "WORLD_SIZE",
        "SLURM_NTASKS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert {key: environment("cpu")[key] for key in ("scheduler", "job_id", "world_size")} == {
        "scheduler": "",
        "job_id": "",
        "world_size": "1",
    }
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4700")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    env = environment("cpu")
    assert (env["scheduler"], env["job_id"], env["world_size"]) == ("slurm", "4700_3", "2")
    assert env["hostname"] and "gpu" not in env
