"""Encoders and classifiers from outside a ``bench run``: released checkpoints, RobustBench, export.

``bench finetune/evaluate --checkpoint`` puts a released encoder (the original repos', the
RobustSSL benchmark's, or one of ours) through exactly the protocol of ``bench run``, so
its numbers sit in the same table. ``--robustbench-model`` evaluates a supervised
adversarial-training classifier under the same attacks (scheme ``AT``: no finetuning).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from bench import progress
from bench.checkpoints import export_classifier, load_encoder, load_robustbench_model
from bench.data import to_float
from bench.evaluate import EvalSettings, evaluate_classifier, seeded_subset
from bench.config import SCHEMES, ConfigError, config_hash, to_dict
from bench.pipeline import (DataCache, RunOutcome, RunRequest, build_config, finetune_and_evaluate, record,
                            with_context, write_sanity)
from bench.results import ResultsStore, environment, now
from bench.train import resolve_device

ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def evaluate_external(
    request: RunRequest,
    *,
    checkpoint: str | None,
    checkpoint_format: str,
    branch: str | None,
    name: str | None,
    robustbench_model: str | None,
    force: bool,
    pretrain_dataset: str | None = None,
) -> str:
    """Finetune (SLF/ALF/AFF) and evaluate a checkpoint, or evaluate a RobustBench model.

    Everything is loaded and checked before anything is written. Rows are labelled with the
    checkpoint's own method and pretraining dataset when it records them (acl-bench
    checkpoints), else with ``<format>:<file stem>`` and ``pretrain_dataset`` ('unknown' when
    not given: it is never guessed).
    """
    config = build_config(request)
    device = resolve_device(config.device)
    store = ResultsStore(config.results_dir)
    data_name = config.data.eval_name or config.data.name
    if robustbench_model:
        if data_name not in ROBUSTBENCH_DATASETS or config.data.image_size != 32:
            raise ConfigError(f"data={data_name!r} at image_size={config.data.image_size} is invalid for a RobustBench "
                              f"model: allowed {list(ROBUSTBENCH_DATASETS)} at 32 (e.g. --preset paper)")
        classifier = load_robustbench_model(robustbench_model, dataset=data_name).to(device)
        label, dataset, source = f"robustbench:{robustbench_model}", data_name, robustbench_model
        file_digest, pretrain_epochs = robustbench_model, ""
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        explicit_arch = config.model.arch if "model.arch" in request.overrides else None
        model, info = load_encoder(checkpoint, checkpoint_format, branch=branch, arch=explicit_arch)
        recorded = info.get("method") if checkpoint_format == "bench" else None
        label = f"{recorded or checkpoint_format}:{path.stem}"
        dataset = pretrain_dataset or info.get("dataset") or "unknown"
        source, file_digest = str(path.resolve()), _file_digest(path)
        pretrain_epochs = info.get("pretrain_epochs", "")
    method = name or label
    identity = {"config": to_dict(config), "source": source, "format": checkpoint_format, "branch": branch,
                "file": file_digest, "pretrain_dataset": dataset}
    digest = config_hash(identity)
    run_id = f"{method.replace(':', '-').replace('/', '-')}-external-s{config.seed}-{digest}"
    if store.is_complete(run_id) and not force:
        progress.log(f"{method}: skipped, run {run_id} is complete (use --force to rerun)")
        return run_id
    data = DataCache(device).get(data_name, config)
    run_dir = store.run_dir(run_id)
    env = environment()
    store.write_json(run_id, "config.json", {**identity, "run_id": run_id, "environment": env, "started": now()})
    if robustbench_model:
        rows = _evaluate_classifier_rows(classifier, data, config, device, run_dir)
    else:
        bn = info.get("branch", "normal") if isinstance(info, dict) else "normal"
        rows = finetune_and_evaluate(bn if bn in model.bn_names() or not model.bn_names() else "normal",
                                     model.to(device), data, config, device, run_dir, label=method)
    rows = with_context(rows, run_id, method=method, dataset=dataset, eval_dataset=data.name, config=config,
                        digest=digest, device=device, env=env)
    for row in rows:
        row["pretrain_epochs"] = pretrain_epochs  # the encoder's, not this command's config
    return record(store, RunOutcome(run_id, rows, {"finished": now(), "rows": len(rows)}))


def _evaluate_classifier_rows(classifier: torch.nn.Module, data, config, device, run_dir: Path) -> list[dict]:
    """A ready classifier (supervised AT): no finetuning, the same evaluation."""
    settings = config.evaluate
    subset = seeded_subset(data.x_test.shape[0], settings.n_eval, settings.subset_seed).to(data.x_test.device)
    began = time.perf_counter()
    report = evaluate_classifier(
        classifier, to_float(data.x_test[subset]), data.y_test[subset],
        EvalSettings(epsilon=settings.epsilon, step_size=settings.step_size, pgd_steps=settings.pgd_steps,
                     attacks=tuple(settings.attacks), n_eval=0, seed=config.seed, batch_size=settings.batch_size,
                     sanity=settings.sanity),
        device,
    )
    write_sanity(run_dir, "AT", report)
    wall = round(time.perf_counter() - began, 2)
    return [{"scheme": "AT", "attack": attack, "metric": "accuracy", "value": round(value, 4), "epsilon": settings.epsilon,
             "n_eval": report.n_eval, "wall_s": wall, "flags": ";".join(report.flags)}
            for attack, value in report.accuracy.items()]


def export_run(results_dir: Path, run_id: str, scheme: str, out: Path) -> Path:
    """Write the finetuned classifier of a stored run as a self-contained module file."""
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r} is invalid: allowed {list(SCHEMES)}")
    source = results_dir / "runs" / run_id / f"classifier_{scheme}.pt"
    if not source.exists():
        raise FileNotFoundError(f"no {scheme} classifier stored for run {run_id!r} (looked for {source})")
    classifier = torch.load(source, map_location="cpu", weights_only=False)
    export_classifier(classifier.eval(), out)
    return out
