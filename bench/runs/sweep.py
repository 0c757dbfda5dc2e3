"""Sweeps: a plan's stages as scheduler jobs, through submitit (SLURM or its local executor).

A plan (seeds × datasets × methods, ``bench.runs.plan``) becomes jobs, one per stage of each
incomplete run (``bench.runs.stages``): ``pretrain`` (with the post stage of a run that has one),
then one ``finetune`` job per scheme that needs only that run's encoder, then one ``collect`` job
(finish ready runs, rebuild ``results.csv``, write the report). Every job is a ``bench stage ...`` command
line that rebuilds its run from the same request (the same run id, checked): what ``--dry-run --json`` prints.

- ``slurm``: submitit's ``AutoExecutor``; one job array per stage (``map_array``): the
  pretrain array, one array per scheme whose task i depends on pretrain task i
  (``--dependency=aftercorr``, so an encoder's SLF/ALF/AFF start as soon as it exists;
  ``kill-on-invalid-dep`` cancels them if it failed), and the collect job after all of them
  (``afterany``). Returns once submitted; ``bench status`` follows the runs.
- ``submitit-local``: the same executor API and job callable on this machine. submitit's
  local executor has no dependencies, so the stages run in phases (pretrain, then schemes,
  then collect), at most ``array_parallelism`` jobs at a time, and the call waits.

The job callable (``StageJob``) is ``submitit.helpers.Checkpointable``: on preemption or timeout submitit
requeues it and the rerun continues from the run's ``pretrain.ckpt``; a job killed outright (SIGKILL, OOM)
is recorded as a resumable failure, so the next sweep resumes it too.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import FailedJobError, UncompletedJobError

from bench.choices import LAUNCHERS  # noqa: F401  (re-exported; the names live in bench.choices)
from bench.config import SCHEMES, ConfigError
from bench.engine import lifetime
from bench.engine.device import available_cores
from bench.runs.pipeline import RunOutcome
from bench.runs.plan import MethodRun, RunPlan, RunRequest
from bench.store.results import ResultsStore

JOB_STAGES = ("pretrain", "finetune", "collect")
LOCAL_POLL_S = 0.2  # how often a local job is checked; submitit's own wait checks every second
# ClusterOptions fields that `bench sweep` sets from flags of the same name (--timeout-min, ...)
CLUSTER_FLAGS = (
    "timeout_min", "max_timeouts", "partition", "account", "constraint", "qos", "gpus_per_node", "cpus_per_task",
    "mem_gb", "array_parallelism",
)  # fmt: skip


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: a stage of a run (or the final collect), as a ``bench`` command line."""

    key: str  # "<run_id>/pretrain", "<run_id>/<scheme>", "collect": what other jobs name in ``after``
    stage: str
    argv: tuple[str, ...]  # the arguments of ``bench``
    run_id: str = ""
    method: str = ""
    scheme: str = ""
    after: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return shlex.join(("bench", *self.argv))

    def to_json(self) -> dict[str, Any]:
        """One ``--dry-run --json`` line."""
        return {
            "job": self.key,
            "run_id": self.run_id or None,
            "method": self.method or None,
            "stage": self.stage,
            "scheme": self.scheme or None,
            "after": list(self.after),
            "command": self.command,
        }


@dataclass
class ClusterOptions:
    """Scheduler settings of a sweep (``bench sweep --help``); ``None`` leaves submitit's default."""

    folder: Path = Path("results/_jobs")  # submitit's logs and pickles; must be on a shared filesystem for SLURM
    timeout_min: int = 24 * 60
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    qos: str | None = None
    gpus_per_node: int | None = None  # None: 1 on SLURM, 0 locally
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 0  # 0: SLURM's default (submitit: 256), locally one job per core
    max_timeouts: int = 3  # requeues after a timeout (preemptions do not count)
    collect_timeout_min: int = 60

    def __post_init__(self) -> None:
        for name, lowest in (
            ("timeout_min", 1),
            ("collect_timeout_min", 1),
            ("cpus_per_task", 1),
            ("gpus_per_node", 0),
            ("array_parallelism", 0),
            ("max_timeouts", 0),
        ):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise ConfigError(f"--{name.replace('_', '-')}={value} is invalid: allowed integers >= {lowest}")
        if self.mem_gb is not None and not (math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise ConfigError(f"--mem-gb={self.mem_gb} is invalid: allowed finite numbers > 0")


# --------------------------------------------------------------------------- jobs and their command lines


def _raw(value: Any) -> str:
    """A config value as the command line spells it (``--set field=value``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def stage_argv(request: RunRequest, run: MethodRun, plan: RunPlan) -> list[str]:
    """The ``bench`` flags that rebuild exactly ``run``: the request's preset, overrides and method
    parameters, with this run's seed and dataset and absolute store directories."""
    overrides = {
        **request.overrides,
        "seed": run.config.seed,
        "data.name": run.config.data.name,
        "results_dir": plan.results_dir.resolve(),
        "reports_dir": plan.reports_dir.resolve(),
    }
    argv = ["--run-id", run.run_id, "--preset", request.preset, "--methods", run.method]
    for dotted, value in overrides.items():
        argv += ["--set", f"{dotted}={_raw(value)}"]
    for scope, params in request.method_params.items():
        if scope in ("*", run.method):
            prefix = "" if scope == "*" else f"{scope}:"
            argv += [item for key, value in params.items() for item in ("--param", f"{prefix}{key}={_raw(value)}")]
    return argv


def plan_jobs(plan: RunPlan, request: RunRequest, *, report_flags: Sequence[str] = ()) -> list[SweepJob]:
    """Every job of the sweep, in submission order; complete runs have none (unless ``plan.force``),
    and a plan with nothing to do has no job at all. ``report_flags`` (``--no-report``, ``--no-figures``)
    go to the collect job, which writes the report."""
    store = ResultsStore(plan.results_dir)
    pending = [run for run in plan.runs if plan.force or not store.run(run.run_id).is_complete()]
    jobs: list[SweepJob] = []
    for run in pending:
        flags = stage_argv(request, run, plan)
        pretrain = SweepJob(
            f"{run.run_id}/pretrain",
            "pretrain",
            ("stage", "pretrain", *flags, *(["--force"] if plan.force else [])),
            run.run_id,
            run.method,
        )
        jobs.append(pretrain)
        for scheme in run.config.finetune.schemes:
            argv = ("stage", "finetune", "--scheme", scheme, *flags)
            jobs.append(
                SweepJob(
                    f"{run.run_id}/{scheme}", "finetune", argv, run.run_id, run.method, scheme, after=(pretrain.key,)
                )
            )
    if jobs:
        dirs = [
            "--set",
            f"results_dir={plan.results_dir.resolve()}",
            "--set",
            f"reports_dir={plan.reports_dir.resolve()}",
        ]
        jobs.append(
            SweepJob(
                "collect",
                "collect",
                ("stage", "collect", *dirs, *report_flags),
                after=tuple(job.key for job in jobs),
            )
        )
    return jobs


# --------------------------------------------------------------------------- the job callable


class StageFailed(RuntimeError):
    """A stage command ended with a failure (recorded in the run's ``failed.json``)."""


class StageJob(submitit.helpers.Checkpointable):
    """A ``bench stage ...`` command run inside a submitit job.

    It runs the command in the job's process without installing signal handlers of its own,
    so submitit's stay: on preemption or timeout submitit calls ``checkpoint``, requeues the
    job, and the rerun continues the run from its checkpoint. ``threads`` (else SLURM's
    ``SLURM_CPUS_PER_TASK``) caps torch's CPU threads, so parallel jobs do not oversubscribe.

    ``launcher``: the pid of the ``bench sweep`` that waits for the job (submitit-local; 0 on SLURM,
    whose jobs outlive their submitter by design). The job ends itself as soon as that process is
    gone, and with its own parent (submitit's controller), so a killed sweep (even ``kill -9``)
    leaves no job training on (review 2, D7)."""

    def __init__(self, entry: Callable[[list[str]], int], threads: int = 0, launcher: int = 0):
        self.entry = entry  # the CLI's ``run_stage_command``, handed down: this level never imports the CLI
        self.threads = threads
        self.launcher = launcher

    def __call__(self, argv: Sequence[str]) -> str:
        launcher = getattr(self, "launcher", 0)  # a job pickled by an older version has none
        if launcher and launcher != os.getpid():  # not when a test calls the job in its own process
            lifetime.die_with_parent()
            lifetime.exit_when_gone(
                launcher, f"the sweep that started this job (pid {launcher}) has ended: job stopped"
            )
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        code = self.entry(list(argv))
        if code != 0:
            raise StageFailed(
                f"{shlex.join(('bench', *argv[:2]))} exited with status {code}: see the run's failed.json"
            )
        return "done"

    def checkpoint(self, argv: Sequence[str]) -> Any:
        """The requeued job: the same command without ``--force``, so it continues the run it was
        forced to restart instead of restarting it again."""
        return submitit.helpers.DelayedSubmission(self, [item for item in argv if item != "--force"])


# --------------------------------------------------------------------------- executors


def make_executor(cluster: str, options: ClusterOptions, stage: str, dependency: str | None = None):
    """A submitit ``AutoExecutor`` for one stage's jobs (a fresh one per stage: submitit cannot unset
    a parameter, and each stage has its own dependency, time limit and resources)."""
    executor = submitit.AutoExecutor(
        folder=options.folder,
        cluster=cluster,
        slurm_max_num_timeout=options.max_timeouts,
        local_max_num_timeout=options.max_timeouts,
    )
    collect = stage == "collect"
    gpus = options.gpus_per_node if options.gpus_per_node is not None else int(cluster == "slurm")
    parameters = {
        "name": f"bench-{stage}",
        "timeout_min": options.collect_timeout_min if collect else options.timeout_min,
        "gpus_per_node": None if collect else gpus,
        "cpus_per_task": 1 if collect else options.cpus_per_task,
        "mem_gb": None if collect else options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_constraint": None if collect else options.constraint,
        "slurm_qos": options.qos,
        "slurm_array_parallelism": options.array_parallelism or None,
        "slurm_dependency": dependency,
        "slurm_additional_parameters": {"kill-on-invalid-dep": "yes"} if dependency else None,
    }
    executor.update_parameters(**{name: value for name, value in parameters.items() if value is not None})
    return executor


def _array_id(jobs: list[Any]) -> str:
    """The SLURM id of an array (``123`` for tasks ``123_0``, ``123_1``…; a one-task map is a plain job)."""
    return jobs[0].job_id.split("_")[0]


def submit_slurm(
    jobs: list[SweepJob],
    options: ClusterOptions,
    entry: Callable[[list[str]], int],
    executor: Callable[..., Any] = make_executor,
) -> dict[str, str]:
    """Submit the sweep to SLURM; returns each job's key → its SLURM job id. Does not wait."""
    pretrain = [job for job in jobs if job.stage == "pretrain"]
    submitted = executor("slurm", options, "pretrain").map_array(StageJob(entry), [list(job.argv) for job in pretrain])
    ids = {job.key: handle.job_id for job, handle in zip(pretrain, submitted)}
    pretrain_id = _array_id(submitted)
    arrays = [pretrain_id]
    schemes = [scheme for scheme in SCHEMES if any(job.scheme == scheme for job in jobs)]
    for scheme in schemes:
        tasks = [job for job in jobs if job.stage == "finetune" and job.scheme == scheme]
        if [job.run_id for job in tasks] != [job.run_id for job in pretrain]:  # task i must be run i's scheme
            raise ConfigError(f"scheme {scheme} is not selected for every run of the sweep: allowed one scheme list")
        dependency = f"aftercorr:{pretrain_id}" if len(pretrain) > 1 else f"afterok:{pretrain_id}"
        handles = executor("slurm", options, f"finetune-{scheme}", dependency).map_array(
            StageJob(entry), [list(job.argv) for job in tasks]
        )
        ids.update({job.key: handle.job_id for job, handle in zip(tasks, handles)})
        arrays.append(_array_id(handles))
    (collect,) = [job for job in jobs if job.stage == "collect"]
    after_all = "afterany:" + ":".join(arrays)
    handle = executor("slurm", options, "collect", after_all).submit(StageJob(entry), list(collect.argv))
    ids[collect.key] = handle.job_id
    return ids


def run_submitit_local(
    jobs: list[SweepJob],
    options: ClusterOptions,
    entry: Callable[[list[str]], int],
    executor: Callable[..., Any] = make_executor,
) -> dict[str, str]:
    """Run the sweep with submitit's local executor, stage by stage; returns each failed job's key →
    why (an empty dict when every job succeeded). A run whose pretraining failed gets no finetuning job.

    Interrupted (Ctrl-C, SIGTERM), it stops the running jobs before the interrupt propagates; killed
    outright, its jobs stop themselves (``StageJob``'s ``launcher``)."""
    cores = available_cores()
    parallel = max(1, options.array_parallelism or cores)
    threads = max(1, cores // parallel)
    failures: dict[str, str] = {}
    handles: list[Any] = []
    try:
        for stage in JOB_STAGES:
            failed_runs = {job.run_id for job in jobs if job.key in failures}
            ready = [job for job in jobs if job.stage == stage and job.run_id not in failed_runs]
            for start in range(0, len(ready), parallel):
                chunk = ready[start : start + parallel]
                handles = executor("local", options, stage).map_array(
                    StageJob(entry, threads, os.getpid()), [list(job.argv) for job in chunk]
                )
                for job, handle in zip(chunk, handles):
                    error = _job_error(handle)
                    if error:
                        failures[job.key] = error
    except BaseException:
        stop_jobs(handles)
        raise
    return failures


def stop_jobs(handles: list[Any], timeout_s: float = 10.0) -> None:
    """Stop the running local jobs and wait for them: SIGKILL of each job's controller (a local job's id
    is its controller's pid), whose task dies with it (``StageJob``: its parent-death signal), silently
    (submitit's own cancel, SIGINT, prints the controller's traceback on this terminal). Nothing is lost:
    every stored write is atomic and the next sweep resumes from the checkpoints."""
    running = [handle for handle in handles if not handle.done()]
    for handle in running:
        try:
            os.kill(int(handle.job_id), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        running = [handle for handle in running if not handle.done()]
        time.sleep(0.05)


def _job_error(handle: Any) -> str:
    """Wait for a local job; '' when it succeeded, else one line saying how it ended. A job whose controller ended
    without a result (its task killed, the OOM killer, or the controller itself killed) is reported at once, as
    a resumable failure: submitit's ``result()`` would first wait 15 s for the result file, a grace for a
    cluster's shared filesystem."""
    while not handle.done():
        time.sleep(LOCAL_POLL_S)
    died = f"JobDied: job {handle.job_id} ended without a result (killed?) (log: {handle.paths.stderr})"
    if not handle.paths.result_pickle.exists():
        return died
    try:
        handle.result()
    except FailedJobError:
        return f"job {handle.job_id} failed (log: {handle.paths.stderr})"
    except UncompletedJobError:  # its result file gone meanwhile
        return died
    return ""


def record_failures(store: ResultsStore, jobs: list[SweepJob], failures: dict[str, str]) -> None:
    """A job that died without recording why (killed from outside) leaves a resumable failure in its run."""
    for job in jobs:
        if job.key in failures and job.run_id and store.run(job.run_id).failure() is None:
            store.run(job.run_id).mark_failed(failures[job.key], resumable=True)


def outcomes(plan: RunPlan, jobs: list[SweepJob], failures: dict[str, str]) -> list[Any]:
    """How each run of the plan ended after a waited-for sweep (``bench.runs.pipeline.RunOutcome``)."""

    store = ResultsStore(plan.results_dir)
    record_failures(store, jobs, failures)
    swept = {job.run_id for job in jobs}
    ended = []
    for run in plan.runs:
        run_dir = store.run(run.run_id)
        if run.run_id not in swept:
            ended.append(RunOutcome(run.run_id, run.method, "skipped"))
        elif run_dir.is_complete():
            ended.append(RunOutcome(run.run_id, run.method, "completed"))
        else:
            reason = run_dir.failure() or "incomplete: a job of this run did not finish"
            ended.append(RunOutcome(run.run_id, run.method, "failed", reason))
    return ended


def submitit_local_runner(
    request: RunRequest,
    options: ClusterOptions,
    entry: Callable[[list[str]], int],
    executor: Callable[..., Any] = make_executor,
) -> Callable[[RunPlan], list[Any]]:
    """``run_plan`` through submitit's local executor, for callers that need a plan's outcomes before going on
    (``bench study``'s looks): the pending runs' stage jobs, waited for; the collect job writes no report."""

    def run(plan: RunPlan) -> list[Any]:
        jobs = plan_jobs(plan, request, report_flags=("--no-report",))
        return outcomes(plan, jobs, run_submitit_local(jobs, options, entry, executor) if jobs else {})

    return run
