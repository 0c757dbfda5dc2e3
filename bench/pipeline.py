"""Orchestration: a plan's method runs → pretrain (or reuse an encoder) → protocol → store.

``run_plan`` takes a resolved ``RunPlan`` (``bench.plan``) and runs each method run, in this
process or in forked worker processes (CPU). A run writes only inside its own run directory
(``bench.results.RunDir``); this process alone appends the rows to ``results.csv``, then marks
the run complete. A completed run (same id) is skipped unless ``force``; an interrupted one
continues from its checkpoint with ``resume``.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
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


@dataclass
class RunOutcome:
    """What one method run produced; the caller records it (the only writer of the table)."""

    run_id: str
    rows: list[ResultRow] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # None: skipped, already complete


def record(store: ResultsStore, outcome: RunOutcome) -> str:
    """Append a finished run's rows (replacing a forced rerun's old ones), then mark it complete."""
    if outcome.summary is not None:
        store.append(outcome.rows, replace_run=outcome.run_id)
        store.run(outcome.run_id).mark_complete(outcome.summary)
    return outcome.run_id


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
        return RunOutcome(run.run_id)
    if plan.force or not plan.resume:
        if run_dir.checkpoint.exists() and not plan.force:
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
    if donor is not None:
        progress.log(f"{name}: reusing the encoder of run {donor.run_id} (same pretraining settings and seed)")
        model.load_state_dict(torch.load(donor.encoder, map_location="cpu", weights_only=True)["model"])
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
    return RunOutcome(run.run_id, rows, {"finished": now(), "rows": len(rows), "pretrain_wall_s": pretrain_wall_s,
                                         "encoder_from": donor.run_id if donor is not None else run.run_id})


def run_plan(plan: RunPlan) -> list[str]:
    """Run every method run of the plan; returns the run ids (in plan order)."""
    device = resolve_device(plan.base.device)
    jobs = resolve_jobs(plan.base.jobs, device, len(plan.runs))
    store = ResultsStore(plan.results_dir)
    cache = DataCache(device)
    base = plan.base
    cache.get(base.data.name, base)  # a missing dataset fails here, before any training
    if base.data.eval_name:
        cache.get(base.data.eval_name, base)
    if jobs == 1:
        return [record(store, run_method(run, plan, store, cache, device)) for run in plan.runs]
    return run_in_workers(plan, store, device, jobs)


# ------------------------------------------------------------------ parallel runs (CPU)


def resolve_jobs(jobs: int, device: torch.device, runs: int) -> int:
    """How many method runs go in parallel: 'auto' (0) = one per core on CPU, 1 on CUDA.

    Small CPU models leave cores idle between tiny ops (two threads run a smoke forward only
    1.3× faster than one), so independent runs in single-thread processes use the machine
    better. Workers are forked (the registry, plugins included, is inherited), so CUDA, which
    cannot be forked, always runs in-process.
    """
    if jobs < 0:
        raise ConfigError(f"jobs={jobs!r} is invalid: allowed 0 (auto) or integers >= 1")
    if device.type != "cpu":
        if jobs > 1:
            raise ConfigError(f"jobs={jobs!r} is invalid on {device.type}: allowed 0 (auto) or 1 (parallel runs are CPU-only)")
        return 1
    if jobs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"jobs={jobs!r} is invalid on this platform (no fork): allowed 0 (auto) or 1")
    if jobs == 0:
        jobs = available_cores() if "fork" in multiprocessing.get_all_start_methods() else 1
    return max(1, min(jobs, runs))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    progress.set_bars(False)  # bars from several processes would garble the terminal; log lines stay


def _run_in_worker(run: MethodRun, plan: RunPlan, device: torch.device) -> RunOutcome:
    return run_method(run, plan, ResultsStore(plan.results_dir), DataCache(device), device)


def run_in_workers(plan: RunPlan, store: ResultsStore, device: torch.device, jobs: int) -> list[str]:
    """Run the plan's methods in ``jobs`` forked processes; this process alone writes the results table."""
    threads = max(1, available_cores() // jobs)
    progress.log(f"running {len(plan.runs)} methods in {jobs} parallel processes ({threads} thread(s) each)")
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        # Adversarial methods (several attack passes per step) first: the cheap ones fill the tail.
        by_cost = sorted(plan.runs, key=lambda run: not run.method_class.has_adversarial_views)
        futures = {pool.submit(_run_in_worker, run, plan, device): run.run_id for run in by_cost}
        try:
            for future in as_completed(futures):
                record(store, future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [run.run_id for run in plan.runs]
