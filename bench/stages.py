"""The stages of one method run: pretrain, finetune-and-evaluate (one per scheme), finish.

``bench run`` calls them in sequence in one process (``bench.pipeline.run_method``); a sweep
runs each as its own scheduler job (``bench.sweep``), the schemes of one encoder in parallel.
Each stage reads what the stages before it stored in the run directory (``RunDir``) and
writes only there, so a stage can run on any node, and twice:

- pretrain: ``config.json``, the pretraining curve, ``encoder.pt``, then ``pretrain.json``
  (the stage's record: it is done). Resumes from ``pretrain.ckpt``; reuses the finished
  encoder of another run with the same pretraining settings and seed instead of training.
- finetune (per scheme): loads the stored encoder, finetunes and evaluates with one scheme
  (``bench.protocol``), writes that scheme's rows to ``rows_<scheme>.csv``.
- finish: assembles ``rows.csv`` from the schemes' rows in the config's scheme order, then
  the completion mark ``done.json``.

A scheme's numbers depend only on the stored encoder, the settings and the seed
(``protocol.finetune_and_evaluate_scheme`` seeds each scheme), so the stages in separate
processes give the numbers of the sequence in one.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import torch

from bench import progress
from bench.atomic import save_torch_atomic, write_atomic
from bench.checkpoints import CheckpointError, EncoderCheckpoint, load_encoder
from bench.config import RunConfig
from bench.data import ImageData, load_dataset
from bench.method import Method
from bench.plan import MethodRun
from bench.protocol import finetune_and_evaluate_scheme
from bench.provenance import environment, now
from bench.results import ResultRow, ResultsStore, RowContext, RunDir
from bench.train import pretrain

STAGES = ("pretrain", "finetune", "finish")


class StageError(RuntimeError):
    """A stage started before the stage it needs had finished (a scheduling error, not a bad run)."""


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
class StageContext:
    """Where stages run and store: the store, the device, a dataset cache; ``force`` and ``resume``
    say what an existing run directory means (see ``pretrain_stage``)."""

    store: ResultsStore
    device: torch.device
    cache: DataCache
    force: bool = False
    resume: bool = False


# --------------------------------------------------------------------------- pretrain


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


def prepare_run_dir(run_dir: RunDir, ctx: StageContext, name: str) -> None:
    """Start afresh or continue: ``force``, no ``resume``, or a failure of the run's own making clear
    the directory; a resumed run keeps its checkpoint and finished stages (a kill from outside
    leaves them intact, ``RunDir.mark_failed``)."""
    failed_before = run_dir.failure()
    resumable = failed_before is not None and run_dir.failure_is_resumable()
    if ctx.force or not ctx.resume or (failed_before and not resumable):
        if failed_before and not resumable:
            progress.log(f"{name}: its last attempt failed ({failed_before}); starting afresh")
        elif run_dir.checkpoint.exists() and not ctx.force:
            progress.log(f"{name}: starting fresh (pass --resume to continue from the existing checkpoint)")
        run_dir.clear()
    elif resumable:
        progress.log(f"{name}: its last attempt was killed ({failed_before}); resuming")
        run_dir.failed.unlink(missing_ok=True)


def give_teacher(method: Method, teacher: RunDir) -> None:
    """Hand a distilling method its teacher: the finished encoder of the teacher run (weights only)."""
    if not teacher.encoder.exists():
        raise StageError(f"teacher run {teacher.run_id} has no encoder yet: it must finish its pretraining first")
    model, info = load_encoder(teacher.encoder, "bench")
    method.set_teacher(model, {**info, "run_id": teacher.run_id})


def pretrain_stage(run: MethodRun, ctx: StageContext) -> bool:
    """Pretrain (or reuse) the run's encoder and store it; False when there was nothing to do
    (the run is complete, or its pretraining stage finished in an earlier attempt)."""
    name, config = run.method, run.config
    run_dir = ctx.store.run(run.run_id)
    if run_dir.is_complete() and not ctx.force:
        return False
    prepare_run_dir(run_dir, ctx, name)
    if run_dir.pretrain_summary.exists():
        return False
    env = environment(ctx.device)
    run_dir.write_json(run_dir.config, {**run.identity, "run_id": run.run_id, "config_hash": run.config_hash,
                                        "seed": config.seed, "pretrain_key": run.pretrain_key, "environment": env,
                                        "device": str(ctx.device), "started": now()})
    torch.manual_seed(config.seed)
    data = ctx.cache.get(config.data.name, config)
    method = run.method_class(run.params)
    if run.teacher:
        give_teacher(method, ctx.store.run(run.teacher))
    model = method.build_model(config.model.arch, data.channels)
    donor = None if ctx.force else find_encoder(ctx.store, run.pretrain_key, exclude=run.run_id)
    if donor is not None and not load_donor(model, donor, name):
        donor = None
    if donor is not None:
        write_atomic(run_dir.history, donor.history.read_bytes())
        pretrain_wall_s = 0.0
    else:
        progress.log(f"{name}: pretraining {config.pretrain.epochs} epochs on {data.name} ({ctx.device})")
        trained = pretrain(method, model, data.x_train, config, run_dir, ctx.device, resume=ctx.resume)
        run_dir.write_history(trained.history)
        pretrain_wall_s = trained.wall_s
    save_torch_atomic(encoder_checkpoint(method, model, run, data.channels).to_state(), run_dir.encoder)
    run_dir.write_json(run_dir.pretrain_summary, {
        "finished": now(), "pretrain_wall_s": pretrain_wall_s, "dataset": data.name,
        "encoder_from": donor.run_id if donor is not None else run.run_id, "environment": env})
    run_dir.set_progress("pretrained")
    return True


# --------------------------------------------------------------------------- finetune


def load_run_encoder(run: MethodRun, run_dir: RunDir) -> tuple[Method, Any]:
    """The method and its model with the run's stored encoder loaded (weights only, strictly)."""
    try:
        state = torch.load(run_dir.encoder, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (EOFError, UnpicklingError, RuntimeError)
        raise CheckpointError(f"encoder {run_dir.encoder} cannot be read ({progress.error_line(error)}): "
                              "rerun this run with --force") from None
    method = run.method_class(run.params)
    model = method.build_model(run.config.model.arch, int(state["in_channels"]))
    model.load_state_dict(state["model"])
    return method, model


def finetune_stage(run: MethodRun, scheme: str, ctx: StageContext) -> bool:
    """Finetune and evaluate the run's stored encoder with one scheme; its rows go to
    ``rows_<scheme>.csv``. False when there was nothing to do (complete, or the scheme's rows exist)."""
    config = run.config
    run_dir = ctx.store.run(run.run_id)
    if run_dir.is_complete() or run_dir.scheme_rows(scheme).exists():
        return False
    summary = run_dir.read_json_or_none(run_dir.pretrain_summary)
    if not isinstance(summary, dict):
        raise StageError(f"run {run.run_id}: scheme {scheme} needs the encoder, and the pretraining stage "
                         "has not finished (run it first)")
    env = environment(ctx.device)
    method, model = load_run_encoder(run, run_dir)
    eval_data = ctx.cache.get(config.data.eval_name or config.data.name, config)
    measurements = finetune_and_evaluate_scheme(model, method.finetune_bn, eval_data, config, ctx.device, run_dir,
                                                scheme, label=run.method)
    context = RowContext.of(run.run_id, config, env, ctx.device, method=run.method, dataset=summary["dataset"],
                            eval_dataset=eval_data.name, config_hash=run.config_hash,
                            pretrain_epochs=config.pretrain.epochs)
    run_dir.write_scheme_rows(scheme, [ResultRow.of(context, measurement) for measurement in measurements])
    return True


# --------------------------------------------------------------------------- finish


def run_schemes(run_dir: RunDir) -> list[str]:
    """The run's schemes, from its stored config (so finishing needs no plan)."""
    return list(run_dir.read_json(run_dir.config)["finetune"]["schemes"])


def finish_stage(run_dir: RunDir, *, required: bool = False) -> bool:
    """Assemble ``rows.csv`` (schemes in config order) and mark the run complete, once every stage
    has finished; returns whether it did. ``required``: a stage still missing is an error."""
    if run_dir.is_complete():
        return False
    summary = run_dir.read_json_or_none(run_dir.pretrain_summary)
    schemes = run_schemes(run_dir) if isinstance(summary, dict) else []
    missing = [scheme for scheme in schemes if not run_dir.scheme_rows(scheme).exists()]
    if not isinstance(summary, dict) or missing:
        if required:
            raise StageError(f"run {run_dir.run_id} cannot finish: "
                             + (f"schemes {missing} have no rows" if missing else "it has no finished encoder"))
        return False
    rows = [row for scheme in schemes for row in run_dir.read_scheme_rows(scheme)]
    run_dir.mark_complete(rows, {"finished": now(), "rows": len(rows), "pretrain_wall_s": summary["pretrain_wall_s"],
                                 "encoder_from": summary["encoder_from"]})
    return True


# --------------------------------------------------------------------------- one stage, failures recorded


def run_stage(stage: str, run: MethodRun, ctx: StageContext, scheme: str | None = None) -> str:
    """One stage of one run as a scheduler job runs it: ``done``, ``skipped`` or ``failed``.

    A failure is recorded in the run directory (``failed.json``, with the stage) instead of
    propagating; interrupts (and a scheduler's requeue, ``SystemExit``) still propagate. The
    stage that stores the last missing piece also finishes the run."""
    run_dir = ctx.store.run(run.run_id)
    threads = torch.get_num_threads()  # a resumed run may switch to the count it was started with
    try:
        if stage == "pretrain":
            worked = pretrain_stage(run, ctx)
        elif stage == "finetune":
            worked = finetune_stage(run, scheme, ctx)
        else:
            worked = False
        finished = finish_stage(run_dir)
    except Exception as error:  # noqa: BLE001 - a failed stage is recorded; the scheduler sees the job fail
        reason = f"{stage}{f' {scheme}' if scheme else ''}: {progress.error_line(error)}"
        run_dir.mark_failed(reason, traceback.format_exc())
        progress.log(f"{run.method}: failed: {reason}")
        return "failed"
    finally:
        torch.set_num_threads(threads)
    return "done" if worked or finished else "skipped"
