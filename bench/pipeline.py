"""One benchmark run: for each method, pretrain → finetune (SLF/ALF/AFF) → evaluate → store.

Config precedence, lowest first: the preset, the method's own preset settings
(``Method.preset_pretrain`` / ``preset_params``), then the user's overrides. Each method
run gets an id from its method, preset, dataset, seed and the hash of its full resolved
config; a completed run with the same id is skipped unless ``force``.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import progress, registry
from bench.checkpoints import save_checkpoint_atomic
from bench.config import ConfigError, RunConfig, _coerce, config_hash, preset, set_field, to_dict, validate
from bench.data import ImageData, load_dataset, to_float
from bench.evaluate import EvalSettings, clean_accuracy, evaluate_classifier, pgd_accuracy, seeded_subset
from bench.finetune import finetune
from bench.method import Method
from bench.results import ResultsStore, environment, now
from bench.train import CHECKPOINT_NAME, pretrain, resolve_device

ENCODER_NAME = "encoder.pt"


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
        config = assemble(method.preset_pretrain(config.preset, config.data.name))
    return validate(config)


def build_params(method: type[Method], config: RunConfig, request: RunRequest):
    """The method's hyperparameters: Params defaults < preset settings < user's --param."""
    values = dict(method.preset_params(config.preset, config.data.name))
    defaults = {f.name: f.default for f in dataclasses.fields(method.Params)}
    for scope in ("*", method.name):
        for key, raw in request.method_params.get(scope, {}).items():
            if key not in defaults:
                raise ConfigError(f"method parameter {key!r} of {method.name!r} is unknown: allowed {sorted(defaults)}")
            values[key] = _coerce(defaults[key], raw, f"{method.name}.{key}")
    return method.make_params(values)


def run_identity(method: type[Method], config: RunConfig, params) -> tuple[str, str, dict[str, Any]]:
    payload = to_dict(config)
    for volatile in ("methods", "device", "results_dir", "reports_dir"):
        payload.pop(volatile)
    payload["method"] = method.name
    payload["method_params"] = dataclasses.asdict(params)
    digest = config_hash(payload)
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


def encoder_checkpoint(method: Method, model, config: RunConfig, run_id: str) -> dict[str, Any]:
    """The 'bench' checkpoint format (see bench.checkpoints)."""
    return {
        "format": "acl-bench",
        "model": model.state_dict(),
        "method": method.name,
        "arch": config.model.arch,
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


def run_method(name: str, request: RunRequest, store: ResultsStore, cache: DataCache, device: torch.device) -> str:
    """Pretrain, finetune and evaluate one method; returns its run id."""
    method_class = registry.get(name)
    config = build_config(request, method_class)
    params = build_params(method_class, config, request)
    run_id, digest, payload = run_identity(method_class, config, params)
    if store.is_complete(run_id) and not request.force:
        progress.log(f"{name}: skipped, run {run_id} is complete (use --force to rerun)")
        return run_id
    run_dir = store.run_dir(run_id)
    if request.force or not request.resume:
        if (run_dir / CHECKPOINT_NAME).exists() and not request.force:
            progress.log(f"{name}: starting fresh (pass --resume to continue from the existing checkpoint)")
        shutil.rmtree(run_dir)
        run_dir = store.run_dir(run_id)
    env = environment()
    store.write_json(run_id, "config.json", {**payload, "run_id": run_id, "config_hash": digest, "seed": config.seed,
                                              "environment": env, "device": str(device), "started": now()})
    torch.manual_seed(config.seed)
    data = cache.get(config.data.name, config)
    method = method_class(params)
    model = method.build_model(config.model.arch, data.channels)
    progress.log(f"{name}: pretraining {config.pretrain.epochs} epochs on {data.name} ({device})")
    trained = pretrain(method, model, data.x_train, config, run_dir, device, resume=request.resume)
    store.write_history(run_id, trained.history)
    save_checkpoint_atomic(encoder_checkpoint(method, model, config, run_id), run_dir / ENCODER_NAME)
    eval_data = cache.get(config.data.eval_name, config) if config.data.eval_name else data
    rows = finetune_and_evaluate(method.finetune_bn, model, eval_data, config, device, run_dir)
    store_rows(store, run_id, rows, method=name, dataset=data.name, eval_dataset=eval_data.name, config=config,
               digest=digest, device=device, env=env)
    store.mark_complete(run_id, {"finished": now(), "rows": len(rows), "pretrain_wall_s": trained.wall_s})
    return run_id


def store_rows(
    store: ResultsStore, run_id: str, rows: list[dict], *, method: str, dataset: str, eval_dataset: str,
    config: RunConfig, digest: str, device: torch.device, env: dict[str, str],
) -> None:
    """Add the run's context columns to each measured number and append them to the table."""
    context = {
        "run_id": run_id, "timestamp": now(), "preset": config.preset, "method": method, "dataset": dataset,
        "eval_dataset": eval_dataset, "seed": config.seed, "pretrain_epochs": config.pretrain.epochs,
        "finetune_epochs": config.finetune.epochs, "config_hash": digest, "code_version": env["code_version"],
        "torch_version": env["torch_version"], "device": str(device),
    }
    store.append([{**context, **row} for row in rows], replace_run=run_id)


def finetune_and_evaluate(
    finetune_bn: str, model, data: ImageData, config: RunConfig, device: torch.device, run_dir: Path
) -> list[dict]:
    """Every scheme of the config: finetune, evaluate, store the classifier, return rows (without context)."""
    settings = config.evaluate
    subset = seeded_subset(data.x_test.shape[0], settings.n_eval, config.seed).to(data.x_test.device)
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
        flags = ";".join(report.flags)
        common = {"scheme": scheme, "epsilon": settings.epsilon, "n_eval": report.n_eval, "flags": flags}
        for attack, value in report.accuracy.items():
            rows.append({**common, "attack": attack, "metric": "accuracy", "value": round(value, 4),
                         "wall_s": round(finetune_s + report.wall_s, 2)})
        best = _best_epoch(tuned.epoch_metrics)
        for attack, value in best.items():
            rows.append({**common, "attack": attack, "metric": "accuracy_best_epoch", "value": round(value, 4),
                         "wall_s": "", "flags": ""})
        progress.log(f"  {scheme}: " + ", ".join(f"{a} {v:.1f}%" for a, v in report.accuracy.items())
                     + (f"  [{flags}]" if flags else ""))
    return rows


def run_benchmark(request: RunRequest, device_name: str | None = None) -> list[str]:
    """Resolve and check everything first, then run each method; returns the run ids."""
    base = build_config(request)
    names = registry.resolve(base.methods)
    for name in names:  # fail on any bad method setting before any work
        method_class = registry.get(name)
        build_params(method_class, build_config(request, method_class), request)
    device = resolve_device(device_name or base.device)
    store = ResultsStore(base.results_dir)
    cache = DataCache(device)
    cache.get(base.data.name, base)  # a missing dataset fails here, before any training
    if base.data.eval_name:
        cache.get(base.data.eval_name, base)
    return [run_method(name, request, store, cache, device) for name in names]
