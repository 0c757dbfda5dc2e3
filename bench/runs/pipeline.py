"""Orchestration on this machine: a plan's method runs → their stages → store.

``run_plan`` takes a resolved ``RunPlan`` (``bench.runs.plan``) and runs each method run, in this
process or in forked worker processes (CPU). A run is its stages (``bench.runs.stages``: pretrain,
post when the run has one, finetune per scheme, finish) in sequence and writes only inside its
own run directory (``bench.store.results.RunDir``); after each run this process rebuilds the ``results.csv`` index.
A completed run (same id) is skipped unless ``force``; an interrupted one continues from its
checkpoint with ``resume``. ``bench sweep`` runs the same stages as scheduler jobs (``bench.runs.sweep``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.engine import lifetime, progress
from bench.engine.device import available_cores, resolve_device
from bench.errors import ConfigError
from bench.runs.plan import MethodRun, RunPlan
from bench.runs.stages import (
    DataCache,
    StageContext,
    finetune_stage,
    finish_stage,
    post_stage,
    pretrain_stage,
    record_failure,
)
from bench.runs.tracking import tracked
from bench.store.results import ResultsStore, warn

__all__ = ["DataCache", "RunOutcome", "execute", "resolve_jobs", "run_method", "run_plan"]


@dataclass(frozen=True)
class RunOutcome:
    """How one method run ended: ``completed``, ``skipped`` (already complete) or ``failed`` (with why)."""

    run_id: str
    method: str
    status: str
    reason: str = ""


def run_method(
    run: MethodRun, plan: RunPlan, store: ResultsStore, cache: DataCache, device: torch.device
) -> RunOutcome:
    """Pretrain (or reuse an encoder), finetune and evaluate one method: its stages (``bench.runs.stages``)
    in sequence, in this process; writes only inside its run directory, holding the run's lock (a second
    writer of the same run waits, then finds it complete)."""
    run_dir = store.run(run.run_id)
    with run_dir.lock(("", *run.config.finetune.schemes), who=run.method):
        if store.verified_complete(run_dir) and not plan.force:  # a complete run with damaged rows is redone
            progress.log(f"{run.method}: skipped, run {run.run_id} is complete (use --force to rerun)")
            return RunOutcome(run.run_id, run.method, "skipped")
        context = StageContext(store, device, cache, force=plan.force, resume=plan.resume)
        with tracked(plan.track, run, run_dir) as tracker:  # the loops report to it (progress.metrics)
            pretrain_stage(run, context)
            post_stage(run, context)
            for scheme in run.config.finetune.schemes:
                finetune_stage(run, scheme, context)
            finish_stage(run_dir, required=True)
            tracker.log_rows(run_dir.read_rows())
    return RunOutcome(run.run_id, run.method, "completed")


def execute(run: MethodRun, plan: RunPlan, store: ResultsStore, cache: DataCache, device: torch.device) -> RunOutcome:
    """``run_method``, with a failure recorded in the run directory instead of ending the whole plan.

    Interrupts (Ctrl-C, SIGTERM) still stop everything; any other error fails this run only,
    with its one-line reason (and the traceback, for ``bench status``) in ``failed.json``."""
    threads = torch.get_num_threads()  # a resumed run may switch to the count it was started with
    try:
        return run_method(run, plan, store, cache, device)
    except Exception as error:  # noqa: BLE001 - every failure of one run is recorded, none ends the plan
        reason = progress.error_line(error)
        record_failure(store.run(run.run_id), reason, error)
        progress.log(f"{run.method}: failed: {reason}")
        return RunOutcome(run.run_id, run.method, "failed", reason)
    finally:
        torch.set_num_threads(threads)


def run_plan(plan: RunPlan) -> list[RunOutcome]:
    """Run every method run of the plan; returns how each ended (in plan order).

    Each finished run is recorded in its own directory, then ``results.csv`` is rebuilt, so a
    failing or killed run never costs the others their results."""
    device = resolve_device(plan.base.device)
    jobs = resolve_jobs(plan.base.jobs, device, len(plan.runs))
    store = ResultsStore(plan.results_dir)
    cache = DataCache(device)
    for run in plan.runs:  # a missing dataset fails here, before anything is written or trained
        data = run.config.data  # an imported encoder is not pretrained: only what it is evaluated on
        names = (data.eval_name or data.name,) if run.imported else (data.name, data.eval_name)
        for name in filter(None, names):
            cache.get(name, run.config)
    if jobs == 1:
        outcomes = []
        for run in plan.runs:
            outcomes.append(execute(run, plan, store, cache, device))
            collect_between(store)
    else:
        outcomes = run_in_workers(plan, store, device, jobs)
    store.collect()  # the last rebuild: a store that cannot be indexed is the plan's failure, after its runs
    return outcomes


def collect_between(store: ResultsStore) -> None:
    """Rebuild the index after one run while others are still to run or running: a failure here (an
    unreadable legacy index, a full disk) is one line, never the end of the plan or of a running
    sibling (review 2, D3: the parent's failed collect terminated the other worker)."""
    try:
        store.collect()
    except Exception as error:  # noqa: BLE001 - the plan's last collect raises it again if it persists
        warn(f"the index was not rebuilt ({progress.error_line(error)}); the runs go on")


# ------------------------------------------------------------------ parallel runs (CPU cores, GPUs)


def resolve_jobs(jobs: int, device: torch.device, runs: int) -> int:
    """How many method runs go in parallel: 'auto' (0) = one per core on CPU, one per GPU on CUDA.

    Small CPU models leave cores idle between tiny ops (two threads run a smoke forward only
    1.3× faster than one), so independent runs in single-thread processes use the machine
    better; CPU workers are forked (the registry, plugins included, is inherited). On CUDA each
    run gets a GPU of its own in a spawned worker (CUDA cannot be forked), which scales with no
    change of semantics (reviews/ecosystem.md §2c); one run per GPU at a time.
    """
    if jobs < 0:
        raise ConfigError(f"jobs={jobs!r} is invalid: allowed 0 (auto) or integers >= 1")
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if jobs > gpus:
            raise ConfigError(f"jobs={jobs!r} is invalid on this machine: allowed 0 (auto) to {gpus} (one run per GPU)")
        return max(1, min(jobs or gpus, runs))
    if device.type != "cpu":
        if jobs > 1:
            raise ConfigError(f"jobs={jobs!r} is invalid on {device.type}: allowed 0 (auto) or 1")
        return 1
    if jobs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"jobs={jobs!r} is invalid on this platform (no fork): allowed 0 (auto) or 1")
    if jobs > available_cores():
        raise ConfigError(
            f"jobs={jobs!r} is invalid on this machine: allowed 0 (auto) to {available_cores()} (one run per core)"
        )
    if jobs == 0:
        jobs = available_cores() if "fork" in multiprocessing.get_all_start_methods() else 1
    return max(1, min(jobs, runs))


def _worker(connection, run: MethodRun, plan: RunPlan, device: torch.device, threads: int, quiet: bool = False) -> None:
    """One run in a worker process (forked on CPU, spawned and pinned to its GPU on CUDA); it dies
    with its parent and reports its outcome on ``connection``; interrupts are the parent's to handle."""
    lifetime.leave_interrupts_to_parent()
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    progress.set_quiet(quiet)
    progress.set_bars(False)  # bars from several processes would garble the terminal; log lines stay
    watch_parent(os.getppid())
    connection.send(execute(run, plan, ResultsStore(plan.results_dir), DataCache(device), device))
    connection.close()


def watch_parent(parent: int, interval_s: float = 0.5) -> None:
    """End this process as soon as its parent is gone (killed, even with SIGKILL): an orphaned
    worker would otherwise train on, write into a run directory a rerun may be using, and hang."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@dataclass
class _Worker:
    process: Any
    connection: Any
    run: MethodRun
    device: torch.device


def worker_devices(device: torch.device, jobs: int) -> list[torch.device]:
    """The device of each worker slot: the CPU for every slot, or GPU i for slot i."""
    if device.type == "cuda":
        return [torch.device("cuda", index) for index in range(jobs)]
    return [device] * jobs


def run_in_workers(
    plan: RunPlan, store: ResultsStore, device: torch.device, jobs: int, start_method: str | None = None
) -> list[RunOutcome]:
    """Run the plan's methods in up to ``jobs`` worker processes, one process per run.

    A process per run (not a pool) keeps runs independent: one that fails or is killed (OOM,
    ``kill -9``) is recorded as failed and the others carry on. On an interrupt every worker
    is stopped before the interrupt propagates. Workers are forked on CPU and spawned on CUDA
    (``start_method`` forces one, e.g. tests of the spawn path on CPU), each on its own GPU."""
    threads = max(1, available_cores() // jobs)
    start_method = start_method or ("spawn" if device.type == "cuda" else "fork")
    if start_method == "fork":
        # once here, before the forks: torch.optim imports torch._dynamo at a run's first optimiser step (2 to 3 s
        # of CPU), which every forked run would otherwise repeat
        import torch._dynamo  # noqa: F401
    where = f"{jobs} GPUs" if device.type == "cuda" else f"{jobs} parallel processes"
    progress.log(f"running {len(plan.runs)} methods in {where} ({threads} thread(s) each, {start_method})")
    context = multiprocessing.get_context(start_method)
    free = worker_devices(device, jobs)
    # Teachers first (their students wait for them), then adversarial methods (several attack passes
    # per step): the cheap ones fill the tail.
    teachers = {upstream for run in plan.runs for upstream in run.upstream.values()}
    pending = sorted(
        plan.runs, key=lambda run: (run.run_id not in teachers, not run.method_class.variant.adversarial_views)
    )
    active: list[_Worker] = []
    outcomes: dict[str, RunOutcome] = {}
    try:
        while pending or active:
            while len(active) < jobs and (run := next_ready(pending, outcomes, store)) is not None:
                pending.remove(run)
                if run.run_id in outcomes:  # its teacher failed: nothing to start
                    continue
                slot = free.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker, args=(sender, run, plan, slot, threads, progress.is_quiet()), daemon=True
                )
                with lifetime.stop_signals_held():
                    process.start()
                sender.close()
                active.append(_Worker(process, receiver, run, slot))
            if not active:  # every pending run waits for a teacher that is not in the plan: cannot happen
                raise RuntimeError(f"runs {[run.run_id for run in pending]} wait for teachers that never run")
            multiprocessing.connection.wait([worker.process.sentinel for worker in active])
            for worker in [worker for worker in active if not worker.process.is_alive()]:
                active.remove(worker)
                free.append(worker.device)
                outcomes[worker.run.run_id] = _collect_outcome(worker, store)
                collect_between(store)
    except BaseException:
        for worker in active:
            worker.process.terminate()
        for worker in active:
            worker.process.join()
        raise
    return [outcomes[run.run_id] for run in plan.runs]


def next_ready(pending: list[MethodRun], outcomes: dict[str, RunOutcome], store: ResultsStore) -> MethodRun | None:
    """The first pending run whose upstream runs (``MethodRun.upstream``: a teacher) have all finished; a
    run one of whose upstream runs failed is recorded as failed (and returned, so the caller drops it)."""
    for run in pending:
        finished = {name: outcomes.get(upstream) for name, upstream in run.upstream.items()}
        if None in finished.values():
            continue
        for name, outcome in finished.items():
            if outcome.status == "failed":
                reason = f"{name.capitalize()}Failed: its {name} run {outcome.run_id} failed ({outcome.reason})"
                store.run(run.run_id).mark_failed(reason)
                outcomes[run.run_id] = RunOutcome(run.run_id, run.method, "failed", reason)
                break
        return run
    return None


def _collect_outcome(worker: _Worker, store: ResultsStore) -> RunOutcome:
    """The outcome a finished worker sent, or a failure naming how it died."""
    worker.process.join()
    try:
        if worker.connection.poll():
            return worker.connection.recv()
    except (EOFError, OSError):
        pass
    finally:
        worker.connection.close()
    code = worker.process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    reason = f"WorkerDied: the process running {worker.run.method} ended without a result ({how})"
    store.run(worker.run.run_id).mark_failed(reason, resumable=True)
    progress.log(f"{worker.run.method}: failed: {reason}")
    return RunOutcome(worker.run.run_id, worker.run.method, "failed", reason)
