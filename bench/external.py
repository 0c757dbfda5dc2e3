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
from bench.pipeline import DataCache, RunRequest, build_config, finetune_and_evaluate, store_rows
from bench.config import config_hash, to_dict
from bench.results import ResultsStore, environment, now
from bench.train import resolve_device


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
) -> str:
    """Finetune (SLF/ALF/AFF) and evaluate a checkpoint, or evaluate a RobustBench model."""
    config = build_config(request)
    device = resolve_device(config.device)
    store = ResultsStore(config.results_dir)
    source = robustbench_model or str(Path(checkpoint).resolve())
    if checkpoint and not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    identity = {"config": to_dict(config), "source": source, "format": checkpoint_format, "branch": branch,
                "file": _file_digest(Path(checkpoint)) if checkpoint else robustbench_model}
    digest = config_hash(identity)
    method = name or (f"robustbench:{robustbench_model}" if robustbench_model else Path(checkpoint).stem)
    run_id = f"{method.replace(':', '-').replace('/', '-')}-external-s{config.seed}-{digest}"
    if store.is_complete(run_id) and not force:
        progress.log(f"{method}: skipped, run {run_id} is complete (use --force to rerun)")
        return run_id
    run_dir = store.run_dir(run_id)
    env = environment()
    store.write_json(run_id, "config.json", {**identity, "run_id": run_id, "environment": env, "started": now()})
    data_name = config.data.eval_name or config.data.name
    data = DataCache(device).get(data_name, config)
    if robustbench_model:
        rows = _evaluate_classifier_rows(load_robustbench_model(robustbench_model).to(device), data, config, device)
    else:
        model, info = load_encoder(checkpoint, checkpoint_format, branch=branch, arch=config.model.arch)
        bn = info.get("branch", "normal") if isinstance(info, dict) else "normal"
        rows = finetune_and_evaluate(bn if bn in model.bn_names() or not model.bn_names() else "normal",
                                     model.to(device), data, config, device, run_dir)
    store_rows(store, run_id, rows, method=method, dataset=config.data.name, eval_dataset=data.name, config=config,
               digest=digest, device=device, env=env)
    store.mark_complete(run_id, {"finished": now(), "rows": len(rows)})
    return run_id


def _evaluate_classifier_rows(classifier: torch.nn.Module, data, config, device) -> list[dict]:
    """A ready classifier (supervised AT): no finetuning, the same evaluation."""
    settings = config.evaluate
    subset = seeded_subset(data.x_test.shape[0], settings.n_eval, config.seed).to(data.x_test.device)
    began = time.perf_counter()
    report = evaluate_classifier(
        classifier, to_float(data.x_test[subset]), data.y_test[subset],
        EvalSettings(epsilon=settings.epsilon, step_size=settings.step_size, pgd_steps=settings.pgd_steps,
                     attacks=tuple(settings.attacks), n_eval=0, seed=config.seed, batch_size=settings.batch_size,
                     sanity=settings.sanity),
        device,
    )
    wall = round(time.perf_counter() - began, 2)
    return [{"scheme": "AT", "attack": attack, "metric": "accuracy", "value": round(value, 4), "epsilon": settings.epsilon,
             "n_eval": report.n_eval, "wall_s": wall, "flags": ";".join(report.flags)}
            for attack, value in report.accuracy.items()]


def export_run(results_dir: Path, run_id: str, scheme: str, out: Path) -> Path:
    """Write the finetuned classifier of a stored run as a self-contained module file."""
    source = results_dir / "runs" / run_id / f"classifier_{scheme}.pt"
    if not source.exists():
        raise FileNotFoundError(f"no {scheme} classifier stored for run {run_id!r} (looked for {source})")
    classifier = torch.load(source, map_location="cpu", weights_only=False)
    export_classifier(classifier.eval(), out)
    return out
