"""Orchestration: a plan's method runs → pretrain (or reuse an encoder) → protocol → store.

``run_plan`` takes a resolved ``RunPlan`` (``bench.plan``) and runs each method run, in this
process or in forked worker processes (CPU). A run writes only inside its own run directory
(``bench.results.RunDir``); this process alone appends the rows to ``results.csv``, then marks
the run complete. A completed run (same id) is skipped unless ``force``; an interrupted one
continues from its checkpoint with ``resume``.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from bench import progress
from bench.atomic import save_torch_atomic, write_atomic
from bench.checkpoints import EncoderCheckpoint
from bench.config import ConfigError, RunConfig
from bench.data import ImageData, load_dataset
from bench.device import available_cores, resolve_device
from bench.method import Method
from bench.plan import MethodRun, RunPlan
from bench.protocol import finetune_and_evaluate
from bench.provenance import environment, now
from bench.results import ResultRow, ResultsStore, RowContext, RunDir
from bench.train import pretrain


class DataCache:
    """Load each dataset once per process (on the run's device)."""

    def __init__(self, device: torch.device):
        self.device, self._cache = device, {}

    def get(self, name: str, config: RunConfig) -> ImageData:
        key = (name, config.data.image_size, config.data.data_dir)
        if key not in self._cache:
            data = load_dataset(name, config.data.data_dir, config.data.download, config.data.image_size)
            self._cache[key] = data.to(self.device)
        return self._cache[key]


@dataclass(frozen=True)
class RunOutcome:
    """How one method run ended: ``completed``, ``skipped`` (already complete) or ``failed`` (with why)."""

    run_id: str
    method: str
    status: str
    reason: str = ""


def find_encoder(store: ResultsStore, key: str, exclude: str) -> RunDir | None:
    """A stored run whose finished encoder has pretraining key ``key`` (newest first)."""
    candidates = sorted((run for run in store.run_dirs() if run.encoder.exists()),
                        key=lambda run: run.encoder.stat().st_mtime, reverse=True)
    for run in candidates:
        if run.run_id == exclude or not run.history.exists():
            continue
        try:
            recorded = run.read_json(run.config).get("pretrain_key")
        except (OSError, ValueError):
            continue
        if recorded == key:
            return run
    return None


def load_donor(model, donor: RunDir, name: str) -> bool:
    """Load another run's finished encoder (weights only); an unreadable one is skipped, said, never fatal."""
    try:
        model.load_state_dict(torch.load(donor.encoder, map_location="cpu", weights_only=True)["model"])
    except Exception as error:  # a damaged donor must not block every run with these settings
        progress.log(f"{name}: the encoder of run {donor.run_id} cannot be read ({progress.error_line(error)}); "
                     "pretraining instead")
        return False
    progress.log(f"{name}: reusing the encoder of run {donor.run_id} (same pretraining settings and seed)")
    return True


def encoder_checkpoint(method: Method, model, run: MethodRun, in_channels: int) -> EncoderCheckpoint:
    config = run.config
    return EncoderCheckpoint(
        model=model.state_dict(), arch=config.model.arch, bn_branches=tuple(method.bn_branches),
        projector=method.projector, normalization=method.normalization, finetune_bn=method.finetune_bn,
        in_channels=in_channels, method=run.method, run_id=run.run_id, dataset=config.data.name,
        pretrain_epochs=config.pretrain.epochs, pretrain_key=run.pretrain_key,
    )


def run_method(run: MethodRun, plan: RunPlan, store: ResultsStore, cache: DataCache,
               device: torch.device) -> RunOutcome:
    """Pretrain (or reuse an encoder), finetune and evaluate one method; writes only inside its run directory."""
    name, config = run.method, run.config
    run_dir = store.run(run.run_id)
    if run_dir.is_complete() and not plan.force:
        progress.log(f"{name}: skipped, run {run.run_id} is complete (use --force to rerun)")
        return RunOutcome(run.run_id, name, "skipped")
    failed_before = run_dir.failure()
    if plan.force or not plan.resume or failed_before:
        if failed_before:
            progress.log(f"{name}: its last attempt failed ({failed_before}); starting afresh")
        elif run_dir.checkpoint.exists() and not plan.force:
            progress.log(f"{name}: starting fresh (pass --resume to continue from the existing checkpoint)")
        run_dir.clear()
    env = environment()
    run_dir.write_json(run_dir.config, {**run.identity, "run_id": run.run_id, "config_hash": run.config_hash,
                                        "seed": config.seed, "pretrain_key": run.pretrain_key, "environment": env,
                                        "device": str(device), "started": now()})
    torch.manual_seed(config.seed)
    data = cache.get(config.data.name, config)
    method = run.method_class(run.params)
    model = method.build_model(config.model.arch, data.channels)
    donor = None if plan.force else find_encoder(store, run.pretrain_key, exclude=run.run_id)
    if donor is not None and not load_donor(model, donor, name):
        donor = None
    if donor is not None:
        model.to(device)
        write_atomic(run_dir.history, donor.history.read_bytes())
        pretrain_wall_s = 0.0
    else:
        progress.log(f"{name}: pretraining {config.pretrain.epochs} epochs on {data.name} ({device})")
        trained = pretrain(method, model, data.x_train, config, run_dir, device, resume=plan.resume)
        run_dir.write_history(trained.history)
        pretrain_wall_s = trained.wall_s
    save_torch_atomic(encoder_checkpoint(method, model, run, data.channels).to_state(), run_dir.encoder)
    eval_data = cache.get(config.data.eval_name, config) if config.data.eval_name else data
    measurements = finetune_and_evaluate(model, method.finetune_bn, eval_data, config, device, run_dir, label=name)
    context = RowContext.of(run.run_id, config, env, device, method=name, dataset=data.name,
                            eval_dataset=eval_data.name, config_hash=run.config_hash,
                            pretrain_epochs=config.pretrain.epochs)
    rows = [ResultRow.of(context, measurement) for measurement in measurements]
    run_dir.mark_complete(rows, {"finished": now(), "rows": len(rows), "pretrain_wall_s": pretrain_wall_s,
                                 "encoder_from": donor.run_id if donor is not None else run.run_id})
    return RunOutcome(run.run_id, name, "completed")


def execute(run: MethodRun, plan: RunPlan, store: ResultsStore, cache: DataCache, device: torch.device) -> RunOutcome:
    """``run_method``, with a failure recorded in the run directory instead of ending the whole plan.

    Interrupts (Ctrl-C, SIGTERM) still stop everything; any other error fails this run only,
    with its one-line reason (and the traceback, for ``bench status``) in ``failed.json``."""
    threads = torch.get_num_threads()  # a resumed run may switch to the count it was started with
    try:
        return run_method(run, plan, store, cache, device)
    except Exception as error:  # noqa: BLE001 - every failure of one run is recorded, none ends the plan
        reason = progress.error_line(error)
        store.run(run.run_id).mark_failed(reason, traceback.format_exc())
        progress.log(f"{run.method}: failed: {reason}")
        return RunOutcome(run.run_id, run.method, "failed", reason)



def run_plan(plan: RunPlan) -> list[RunOutcome]:
    """Run every method run of the plan; returns how each ended (in plan order).

    Each finished run is recorded in its own directory, then ``results.csv`` is rebuilt, so a
    failing or killed run never costs the others their results."""
    device = resolve_device(plan.base.device)
    jobs = resolve_jobs(plan.base.jobs, device, len(plan.runs))
    store = ResultsStore(plan.results_dir)
    cache = DataCache(device)
    base = plan.base
    cache.get(base.data.name, base)  # a missing dataset fails here, before any training
    if base.data.eval_name:
        cache.get(base.data.eval_name, base)
    if jobs == 1:
        outcomes = []
        for run in plan.runs:
            outcomes.append(execute(run, plan, store, cache, device))
            store.collect()
        return outcomes
    return run_in_workers(plan, store, device, jobs)


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
        raise ConfigError(f"jobs={jobs!r} is invalid on this machine: allowed 0 (auto) to {available_cores()} "
                          "(one run per core)")
    if jobs == 0:
        jobs = available_cores() if "fork" in multiprocessing.get_all_start_methods() else 1
    return max(1, min(jobs, runs))


def _worker(connection, run: MethodRun, plan: RunPlan, device: torch.device, threads: int, quiet: bool = False) -> None:
    """One run in a worker process (forked on CPU, spawned and pinned to its GPU on CUDA); it dies
    with its parent and reports its outcome on ``connection``."""
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


def run_in_workers(plan: RunPlan, store: ResultsStore, device: torch.device, jobs: int,
                   start_method: str | None = None) -> list[RunOutcome]:
    """Run the plan's methods in up to ``jobs`` worker processes, one process per run.

    A process per run (not a pool) keeps runs independent: one that fails or is killed (OOM,
    ``kill -9``) is recorded as failed and the others carry on. On an interrupt every worker
    is stopped before the interrupt propagates. Workers are forked on CPU and spawned on CUDA
    (``start_method`` forces one, e.g. tests of the spawn path on CPU), each on its own GPU."""
    threads = max(1, available_cores() // jobs)
    start_method = start_method or ("spawn" if device.type == "cuda" else "fork")
    where = f"{jobs} GPUs" if device.type == "cuda" else f"{jobs} parallel processes"
    progress.log(f"running {len(plan.runs)} methods in {where} ({threads} thread(s) each, {start_method})")
    context = multiprocessing.get_context(start_method)
    free = worker_devices(device, jobs)
    # Adversarial methods (several attack passes per step) first: the cheap ones fill the tail.
    pending = sorted(plan.runs, key=lambda run: not run.method_class.has_adversarial_views)
    active: list[_Worker] = []
    outcomes: dict[str, RunOutcome] = {}
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run, slot = pending.pop(0), free.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(sender, run, plan, slot, threads, progress.is_quiet()),
                                          daemon=True)
                process.start()
                sender.close()
                active.append(_Worker(process, receiver, run, slot))
            multiprocessing.connection.wait([worker.process.sentinel for worker in active])
            for worker in [worker for worker in active if not worker.process.is_alive()]:
                active.remove(worker)
                free.append(worker.device)
                outcomes[worker.run.run_id] = _collect_outcome(worker, store)
                store.collect()
    except BaseException:
        for worker in active:
            worker.process.terminate()
        for worker in active:
            worker.process.join()
        raise
    return [outcomes[run.run_id] for run in plan.runs]


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
    store.run(worker.run.run_id).mark_failed(reason)
    progress.log(f"{worker.run.method}: failed: {reason}")
    return RunOutcome(worker.run.run_id, worker.run.method, "failed", reason)
