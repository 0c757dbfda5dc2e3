"""One benchmark run: for each method, pretrain → finetune (SLF/ALF/AFF) → evaluate → store.

Config precedence, lowest first: the preset, the method's published settings
(``Method.published(preset, dataset)``: pretraining overrides and params), then the user's overrides. Each method
run gets an id from its method, preset, dataset, seed and the hash of its full resolved
config; a completed run with the same id is skipped unless ``force``.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import progress, registry
from bench.atomic import write_atomic
from bench.checkpoints import save_checkpoint_atomic
from bench.config import ConfigError, RunConfig, config_hash, preset, set_field, to_dict, validate
from bench.data import ImageData, load_dataset, to_float
from bench.evaluate import EvalSettings, clean_accuracy, evaluate_classifier, pgd_accuracy, seeded_subset
from bench.finetune import finetune
from bench.method import Method
from bench.results import HISTORY_NAME, ResultsStore, environment, now
from bench.train import CHECKPOINT_NAME, pretrain, resolve_device

ENCODER_NAME = "encoder.pt"
SANITY_PREFIX = "sanity_"
PAPER_STEP_RATIO = 0.25  # PGD step / ε of the papers (2/255 for 8/255), for ε-curve points when the main ε is 0


@dataclass
class RunRequest:
    """What the user asked for: a preset, dotted overrides, methods and switches."""

    preset: str = "smoke"
    overrides: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, dict[str, str]] = field(default_factory=dict)  # method or '*' → {key: value}
    methods: tuple[str, ...] = ("all",)
    force: bool = False
    resume: bool = False


def build_config(request: RunRequest, method: type[Method] | None = None) -> RunConfig:
    """Preset, then the method's preset settings (for the chosen dataset), then the user's overrides."""

    def assemble(method_settings: dict[str, Any]) -> RunConfig:
        config = preset(request.preset)
        for key, value in method_settings.items():
            set_field(config, f"pretrain.{key}", value)
        for dotted, value in request.overrides.items():
            set_field(config, dotted, value)
        config.methods = tuple(request.methods)
        return config

    config = assemble({})
    if method is not None:
        config = assemble(method.published(config.preset, config.data.name).pretrain)
    return validate(config)


def build_params(method: type[Method], config: RunConfig, request: RunRequest):
    """The method's hyperparameters: Params defaults < published settings < user's --param."""
    values = dict(method.published(config.preset, config.data.name).params)
    for scope in ("*", method.name):
        values.update(request.method_params.get(scope, {}))
    return method.make_params(values)


def run_identity(method: type[Method], config: RunConfig, params) -> tuple[str, str, dict[str, Any]]:
    payload = to_dict(config)
    for volatile in ("methods", "device", "jobs", "results_dir", "reports_dir"):
        payload.pop(volatile)
    payload["method"] = method.name
    payload["method_params"] = dataclasses.asdict(params)
    # The hash names the configuration without its seed, so the seeds of one configuration
    # share it (the report averages exactly those); the run id adds the seed.
    digest = config_hash({key: value for key, value in payload.items() if key != "seed"})
    run_id = f"{method.name}-{config.preset}-{config.data.name}-s{config.seed}-{digest}"
    return run_id, digest, payload


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


# Config sections that decide the encoder; finetuning and evaluation settings do not.
PRETRAINING_FIELDS = ("preset", "seed", "model", "attack", "pretrain", "method", "method_params")


def pretraining_key(payload: dict[str, Any]) -> str:
    """Hash of everything that decides a pretrained encoder: runs that differ only in
    finetuning or evaluation settings (ε, attacks, n_eval, schemes…) share it, and share the encoder."""
    data = payload["data"]
    return config_hash({**{name: payload[name] for name in PRETRAINING_FIELDS},
                        "data": {"name": data["name"], "image_size": data["image_size"]}})


def find_encoder(store: ResultsStore, key: str, exclude: str) -> Path | None:
    """A stored run directory whose finished encoder has pretraining key ``key`` (newest first)."""
    candidates = sorted(store.runs.glob(f"*/{ENCODER_NAME}"), key=lambda path: path.stat().st_mtime, reverse=True)
    for encoder in candidates:
        run_dir = encoder.parent
        if run_dir.name == exclude or not (run_dir / HISTORY_NAME).exists():
            continue
        try:
            recorded = json.loads((run_dir / "config.json").read_text()).get("pretrain_key")
        except (OSError, ValueError):
            continue
        if recorded == key:
            return run_dir
    return None


def encoder_checkpoint(method: Method, model, config: RunConfig, run_id: str, pretrain_key: str = "") -> dict[str, Any]:
    """The 'bench' checkpoint format (see bench.checkpoints)."""
    return {
        "pretrain_key": pretrain_key,
        "format": "acl-bench",
        "model": model.state_dict(),
        "method": method.name,
        "arch": config.model.arch,
        "dataset": config.data.name,
        "pretrain_epochs": config.pretrain.epochs,
        "bn_branches": list(method.bn_branches),
        "projector": method.projector,
        "normalization": method.normalization,
        "finetune_bn": method.finetune_bn,
        "in_channels": 3,
        "run_id": run_id,
    }


def _best_epoch(epoch_metrics: list[dict[str, float]]) -> dict[str, float]:
    """The epoch the released scripts would report: best robust accuracy on the test set."""
    return max(epoch_metrics, key=lambda metrics: (metrics["pgd20"], metrics["clean"])) if epoch_metrics else {}


@dataclass
class RunOutcome:
    """What one method run produced; the caller records it (the only writer of the table)."""

    run_id: str
    rows: list[dict] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # None: skipped, already complete


def record(store: ResultsStore, outcome: RunOutcome) -> str:
    """Append a finished run's rows (replacing a forced rerun's old ones), then mark it complete."""
    if outcome.summary is not None:
        store.append(outcome.rows, replace_run=outcome.run_id)
        store.mark_complete(outcome.run_id, outcome.summary)
    return outcome.run_id


def run_method(name: str, request: RunRequest, store: ResultsStore, cache: DataCache, device: torch.device) -> RunOutcome:
    """Pretrain, finetune and evaluate one method; writes only inside its run directory."""
    method_class = registry.get(name)
    config = build_config(request, method_class)
    params = build_params(method_class, config, request)
    run_id, digest, payload = run_identity(method_class, config, params)
    if store.is_complete(run_id) and not request.force:
        progress.log(f"{name}: skipped, run {run_id} is complete (use --force to rerun)")
        return RunOutcome(run_id)
    run_dir = store.run_dir(run_id)
    if request.force or not request.resume:
        if (run_dir / CHECKPOINT_NAME).exists() and not request.force:
            progress.log(f"{name}: starting fresh (pass --resume to continue from the existing checkpoint)")
        shutil.rmtree(run_dir)
        run_dir = store.run_dir(run_id)
    env = environment()
    pretrain_key = pretraining_key(payload)
    store.write_json(run_id, "config.json", {**payload, "run_id": run_id, "config_hash": digest, "seed": config.seed,
                                              "pretrain_key": pretrain_key, "environment": env, "device": str(device),
                                              "started": now()})
    torch.manual_seed(config.seed)
    data = cache.get(config.data.name, config)
    method = method_class(params)
    model = method.build_model(config.model.arch, data.channels)
    donor = None if request.force else find_encoder(store, pretrain_key, exclude=run_id)
    if donor is not None:
        progress.log(f"{name}: reusing the encoder of run {donor.name} (same pretraining settings and seed)")
        model.load_state_dict(torch.load(donor / ENCODER_NAME, map_location="cpu", weights_only=False)["model"])
        model.to(device)
        write_atomic(run_dir / HISTORY_NAME, (donor / HISTORY_NAME).read_bytes())
        pretrain_wall_s = 0.0
    else:
        progress.log(f"{name}: pretraining {config.pretrain.epochs} epochs on {data.name} ({device})")
        trained = pretrain(method, model, data.x_train, config, run_dir, device, resume=request.resume)
        store.write_history(run_id, trained.history)
        pretrain_wall_s = trained.wall_s
    save_checkpoint_atomic(encoder_checkpoint(method, model, config, run_id, pretrain_key), run_dir / ENCODER_NAME)
    eval_data = cache.get(config.data.eval_name, config) if config.data.eval_name else data
    rows = finetune_and_evaluate(method.finetune_bn, model, eval_data, config, device, run_dir, label=name)
    rows = with_context(rows, run_id, method=name, dataset=data.name, eval_dataset=eval_data.name, config=config,
                        digest=digest, device=device, env=env)
    return RunOutcome(run_id, rows, {"finished": now(), "rows": len(rows), "pretrain_wall_s": pretrain_wall_s,
                                     "encoder_from": donor.name if donor is not None else run_id})


def with_context(
    rows: list[dict], run_id: str, *, method: str, dataset: str, eval_dataset: str,
    config: RunConfig, digest: str, device: torch.device, env: dict[str, str],
) -> list[dict]:
    """Add the run's context columns to each measured number."""
    context = {
        "run_id": run_id, "timestamp": now(), "preset": config.preset, "method": method, "dataset": dataset,
        "eval_dataset": eval_dataset, "seed": config.seed, "pretrain_epochs": config.pretrain.epochs,
        "finetune_epochs": config.finetune.epochs, "config_hash": digest, "code_version": env["code_version"],
        "torch_version": env["torch_version"], "device": str(device),
    }
    return [{**context, **row} for row in rows]


def finetune_and_evaluate(
    finetune_bn: str, model, data: ImageData, config: RunConfig, device: torch.device, run_dir: Path, label: str = "",
) -> list[dict]:
    """Every scheme of the config: finetune, evaluate, store the classifier, return rows (without context)."""
    settings = config.evaluate
    subset = seeded_subset(data.x_test.shape[0], settings.n_eval, settings.subset_seed).to(data.x_test.device)
    x_eval, y_eval = to_float(data.x_test[subset]), data.y_test[subset]
    eval_settings = EvalSettings(
        epsilon=settings.epsilon, step_size=settings.step_size, pgd_steps=settings.pgd_steps,
        attacks=tuple(settings.attacks), n_eval=0, seed=config.seed, batch_size=settings.batch_size,
        sanity=settings.sanity,
    )

    def epoch_metrics(classifier) -> dict[str, float]:
        return {
            "clean": clean_accuracy(classifier, x_eval, y_eval, settings.batch_size),
            "pgd20": pgd_accuracy(classifier, x_eval, y_eval, settings.epsilon, settings.step_size, settings.pgd_steps,
                                  batch_size=settings.batch_size, seed=config.seed),
        }

    rows: list[dict] = []
    for scheme in config.finetune.schemes:
        began = time.perf_counter()
        tuned = finetune(
            scheme, model, finetune_bn, data.x_train, data.y_train, data.num_classes, config.finetune,
            epsilon=settings.epsilon, step_size=settings.step_size, seed=config.seed, device=device,
            epoch_eval=epoch_metrics,
        )
        finetune_s = time.perf_counter() - began
        save_checkpoint_atomic(tuned.classifier, run_dir / f"classifier_{scheme}.pt")
        report = evaluate_classifier(tuned.classifier, x_eval, y_eval, eval_settings, device)
        write_sanity(run_dir, scheme, report)
        flags = ";".join(report.flags)
        common = {"scheme": scheme, "epsilon": settings.epsilon, "n_eval": report.n_eval, "flags": flags}
        for attack, value in report.accuracy.items():
            rows.append({**common, "attack": attack, "metric": "accuracy", "value": round(value, 4),
                         "wall_s": round(finetune_s + report.wall_s, 2)})
        rows += epsilon_curve_rows(tuned.classifier, x_eval, y_eval, config, common)
        best = _best_epoch(tuned.epoch_metrics)
        for attack, value in best.items():
            rows.append({**common, "attack": attack, "metric": "accuracy_best_epoch", "value": round(value, 4),
                         "wall_s": "", "flags": ""})
        prefix = f"  {label} {scheme}" if label else f"  {scheme}"
        progress.log(f"{prefix}: " + ", ".join(f"{a} {v:.1f}%" for a, v in report.accuracy.items())
                     + (f"  [{flags}]" if flags else ""))
    return rows


def epsilon_curve_rows(classifier, x: torch.Tensor, y: torch.Tensor, config: RunConfig, common: dict) -> list[dict]:
    """PGD accuracy of one classifier at each other ε of ``evaluate.epsilon_curve`` (metric ``accuracy_vs_epsilon``)."""
    settings, rows = config.evaluate, []
    ratio = settings.step_size / settings.epsilon if settings.epsilon > 0 else PAPER_STEP_RATIO
    for epsilon in settings.epsilon_curve:
        if abs(epsilon - settings.epsilon) < 1e-9:
            continue  # the main PGD row of this classifier is that point (the report joins it)
        value = pgd_accuracy(classifier, x, y, epsilon, ratio * epsilon, settings.pgd_steps,
                             batch_size=settings.batch_size, seed=config.seed)
        rows.append({**common, "attack": f"pgd{settings.pgd_steps}", "metric": "accuracy_vs_epsilon",
                     "epsilon": epsilon, "value": round(value, 4), "wall_s": "", "flags": ""})
    return rows


def write_sanity(run_dir: Path, scheme: str, report) -> Path:
    """Every sanity check's verdict and numbers, passed or not, for the report (``sanity_<scheme>.json``)."""
    checks = {name: {"passed": bool(passed), "detail": detail} for name, (passed, detail) in report.sanity.items()}
    path = run_dir / f"{SANITY_PREFIX}{scheme}.json"
    write_atomic(path, json.dumps(checks, indent=2))
    return path


def run_benchmark(request: RunRequest, device_name: str | None = None) -> list[str]:
    """Resolve and check everything first, then run each method; returns the run ids."""
    base = build_config(request)
    names = registry.resolve(base.methods)
    for name in names:  # fail on any bad method setting before any work
        method_class = registry.get(name)
        build_params(method_class, build_config(request, method_class), request)
    device = resolve_device(device_name or base.device)
    jobs = resolve_jobs(base.jobs, device, len(names))
    store = ResultsStore(base.results_dir)
    cache = DataCache(device)
    cache.get(base.data.name, base)  # a missing dataset fails here, before any training
    if base.data.eval_name:
        cache.get(base.data.eval_name, base)
    if jobs == 1:
        return [record(store, run_method(name, request, store, cache, device)) for name in names]
    return run_in_workers(names, request, store, device, jobs)


# ------------------------------------------------------------------ parallel runs (CPU)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


def _run_in_worker(name: str, request: RunRequest, device: torch.device) -> RunOutcome:
    base = build_config(request)
    return run_method(name, request, ResultsStore(base.results_dir), DataCache(device), device)


def run_in_workers(names: list[str], request: RunRequest, store: ResultsStore, device: torch.device, jobs: int) -> list[str]:
    """Run methods in ``jobs`` forked processes; this process alone writes the results table."""
    threads = max(1, available_cores() // jobs)
    progress.log(f"running {len(names)} methods in {jobs} parallel processes ({threads} thread(s) each)")
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        # Adversarial methods (several attack passes per step) first: the cheap ones fill the tail.
        by_cost = sorted(names, key=lambda name: not registry.get(name).has_adversarial_views)
        futures = {pool.submit(_run_in_worker, name, request, device): name for name in by_cost}
        run_ids: dict[str, str] = {}
        try:
            for future in as_completed(futures):
                run_ids[futures[future]] = record(store, future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [run_ids[name] for name in names]
