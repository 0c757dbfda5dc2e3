"""The stages of one method run: pretrain, post (when the run has one), finetune-and-evaluate
(one per scheme), finish.

``bench run`` calls them in sequence in one process (``bench.runs.pipeline.run_method``); a sweep
runs each as its own scheduler job (``bench.runs.sweep``), the schemes of one encoder in parallel.
Each stage reads what the stages before it stored in the run directory (``RunDir``) and
writes only there, so a stage can run on any node, and twice:

- pretrain: ``config.json`` and ``config.yaml``, the pretraining curve, ``encoder.pt``, then ``pretrain.json``
  (the stage's record: it is done). Resumes from ``pretrain.ckpt``; reuses the finished encoder of
  another run with the same pretraining settings and seed instead of training. An imported encoder's
  run (``bench evaluate --checkpoint``) records the import instead (``bench.runs.imported``).
  The stored encoder is ``Method.encoder_for_finetuning`` of the trained model (DynACL's
  momentum key encoder; the model itself for every other method).
- post (runs with the post stage, ``MethodRun.post``: ``dynacl++``, any ``<name>++``, ``--post pp``): LP-AFT on
  K-means pseudo-labels of the pretraining set (``bench.evaluation.post``) from ``encoder.pt`` to
  ``encoder_post.pt``, then ``post.json``. A sweep runs it in the pretrain job (``run_stage``).
- finetune (per scheme): loads the stored encoder (the post stage's when there is one),
  finetunes and evaluates with one scheme (``bench.evaluation.scheme_run``), writes that scheme's rows to
  ``rows_<scheme>.csv``.
- finish: assembles ``rows.csv`` from the schemes' rows in the config's scheme order, then
  the completion mark ``done.json``.

A scheme's numbers depend only on the stored encoder, the settings and the seed (``scheme_run`` seeds each
scheme), so the stages in separate processes give the numbers of the sequence in one.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig
from bench.engine import progress
from bench.engine.checkpoints import CheckpointError, EncoderCheckpoint, load_encoder
from bench.engine.data import ImageData, load_dataset
from bench.evaluation.post import post_process
from bench.evaluation.scheme_run import finetune_and_evaluate_scheme
from bench.methodkit.method import Method
from bench.runs.donors import find_encoder, load_donor
from bench.runs.experiment_file import write_run_experiment
from bench.runs.plan import MethodRun
from bench.runs.train import pretrain, restore_threads
from bench.store.atomic import DiskFullError, save_torch_atomic, write_atomic
from bench.store.provenance import environment, now
from bench.store.results import ResultsStore, RunDir
from bench.store.rows import ResultRow, RowContext

STAGES = ("pretrain", "post", "finetune", "finish")


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


def encoder_checkpoint(method: Method, model, run: MethodRun, in_channels: int) -> EncoderCheckpoint:
    config = run.config
    return EncoderCheckpoint(
        model=model.state_dict(),
        arch=config.model.arch,
        bn_branches=tuple(method.model.branches),
        projector=method.model.projector,
        normalization=method.model.normalization,
        finetune_bn=method.model.finetune_bn,
        in_channels=in_channels,
        method=run.method,
        run_id=run.run_id,
        dataset=config.data.name,
        pretrain_epochs=config.pretrain.epochs,
        pretrain_key=run.pretrain_key,
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


def give_inputs(method: Method, run: MethodRun, store: ResultsStore) -> None:
    """Hand the method, before its model is built, its inputs from other runs (``MethodRun.upstream``)."""
    for name, upstream in run.upstream.items():  # 'teacher' so far: the run's finished encoder, weights only
        teacher = store.run(upstream)
        if not teacher.encoder.exists():
            raise StageError(f"{name} run {upstream} has no encoder yet: it must finish its pretraining first")
        model, info = load_encoder(teacher.encoder, "bench")
        method.set_teacher(model, {**info, "run_id": upstream})


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
    if run.imported is not None:  # an encoder from a file or RobustBench, not trained (bench.runs.imported)
        return run.imported.record(run, run_dir, ctx.device)
    env = environment(ctx.device)
    run_dir.write_json(
        run_dir.config,
        {
            **run.identity,
            "run_id": run.run_id,
            "config_hash": run.config_hash,
            "seed": config.seed,
            "pretrain_key": run.pretrain_key,
            "environment": env,
            "device": str(ctx.device),
            "started": now(),
        },
    )
    write_run_experiment(run_dir, run)  # config.yaml: `bench run --config` on it gives this run id
    torch.manual_seed(config.seed)
    data = ctx.cache.get(config.data.name, config)
    method = run.method_class(run.params)
    give_inputs(method, run, ctx.store)
    model = method.build_model(config.model.arch, data.channels)
    donor = None if ctx.force else find_encoder(ctx.store, run.pretrain_key, exclude=run.run_id)
    encoder = method.encoder_for_finetuning(model)  # a donor's encoder.pt has this structure
    if donor is not None and not load_donor(encoder, donor, name):
        donor = None
    if donor is not None:
        write_atomic(run_dir.history, donor.history.read_bytes())
        pretrain_wall_s = 0.0
    else:
        progress.log(f"{name}: pretraining {config.pretrain.epochs} epochs on {data.name} ({ctx.device})")
        trained = pretrain(method, model, data.x_train, config, run_dir, ctx.device, resume=ctx.resume)
        run_dir.write_history(trained.history)
        pretrain_wall_s = trained.wall_s
        encoder = method.encoder_for_finetuning(model)
    save_torch_atomic(encoder_checkpoint(method, encoder, run, data.channels).to_state(), run_dir.encoder)
    run_dir.write_json(
        run_dir.pretrain_summary,
        {
            "finished": now(),
            "pretrain_wall_s": pretrain_wall_s,
            "dataset": data.name,
            "encoder_from": donor.run_id if donor is not None else run.run_id,
            "environment": env,
            "threads": torch.get_num_threads(),  # the run's count (a resumed pretraining restored it): D12
        },
    )
    run_dir.set_progress("pretrained")
    return True


# --------------------------------------------------------------------------- post


def post_stage(run: MethodRun, ctx: StageContext) -> bool:
    """The run's post stage (``MethodRun.post_settings``; DynACL++'s LP-AFT, ``bench.evaluation.post``) on the
    stored encoder: ``encoder_post.pt``, then ``post.json``. False when the run has none, the run
    is complete or the stage finished in an earlier attempt.

    Seeded with the run's seed (global RNG and the stage's generator), so the encoder it gives
    depends only on the stored encoder, the settings and the seed, wherever the stage runs."""
    config, run_dir = run.config, ctx.store.run(run.run_id)
    if run.imported is not None:  # an imported encoder is evaluated as it is
        return False
    method = run.method_class(run.params)
    settings = run.post_settings
    if settings is None or run_dir.is_complete() or run_dir.post_summary.exists():
        return False
    if not isinstance(run_dir.read_json_or_none(run_dir.pretrain_summary), dict):
        raise StageError(
            f"run {run.run_id}: the post stage needs the encoder, and the pretraining stage "
            "has not finished (run it first)"
        )
    if ctx.resume:
        restore_threads(run_dir.read_json(run_dir.pretrain_summary).get("threads"), f"{run.method} post")
    _, model = load_run_encoder(run, run_dir, run_dir.encoder)
    data = ctx.cache.get(config.data.name, config)
    run_dir.set_progress("post", post=run.post)
    progress.log(f"{run.method}: post stage {run.post!r} (LP-AFT on {settings.clusters} K-means pseudo-labels)")
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=ctx.device).manual_seed(config.seed)
    began = time.perf_counter()
    processed = post_process(model, data.x_train, settings, ctx.device, generator)
    wall_s = time.perf_counter() - began
    save_torch_atomic(encoder_checkpoint(method, processed, run, data.channels).to_state(), run_dir.post_encoder)
    run_dir.write_json(
        run_dir.post_summary,
        {
            "finished": now(),
            "post": run.post,
            "post_wall_s": wall_s,
            "settings": dataclasses.asdict(settings),
            "environment": environment(ctx.device),
        },
    )
    run_dir.set_progress("post-processed")
    return True


# --------------------------------------------------------------------------- finetune


def finetuning_encoder(run: MethodRun, run_dir: RunDir) -> Path:
    """The stored encoder the schemes finetune: the post stage's when the run has one (which must
    have finished), else the pretraining stage's."""
    if run.post_settings is None:
        return run_dir.encoder
    if not isinstance(run_dir.read_json_or_none(run_dir.post_summary), dict):
        raise StageError(
            f"run {run.run_id}: finetuning needs the post stage's encoder, and the post stage "
            "has not finished (run it first)"
        )
    return run_dir.post_encoder


def load_run_encoder(run: MethodRun, run_dir: RunDir, path: Path | None = None) -> tuple[Method, Any]:
    """The method and its finetuning encoder (``Method.encoder_for_finetuning`` of its model) with the
    stored encoder ``path`` (default: ``finetuning_encoder``) loaded (weights only, strictly)."""
    path = finetuning_encoder(run, run_dir) if path is None else path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (EOFError, UnpicklingError, RuntimeError)
        raise CheckpointError(
            f"encoder {path} cannot be read ({progress.error_line(error)}): rerun this run with --force"
        ) from None
    method = run.method_class(run.params)
    model = method.encoder_for_finetuning(method.build_model(run.config.model.arch, int(state["in_channels"])))
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
        raise StageError(
            f"run {run.run_id}: scheme {scheme} needs the encoder, and the pretraining stage "
            "has not finished (run it first)"
        )
    if ctx.resume:  # finetuning sums in a thread-dependent order too: resume at the run's count (D12)
        restore_threads(summary.get("threads"), f"{run.method} {scheme}")
    env = environment(ctx.device)
    eval_data = ctx.cache.get(config.data.eval_name or config.data.name, config)
    if run.imported is not None:  # bench evaluate --checkpoint: the file's encoder (bench.runs.imported)
        measurements = run.imported.measure(scheme, eval_data, config, ctx.device, run_dir, run.method)
    else:
        method, model = load_run_encoder(run, run_dir)
        branch = method.model.finetune_bn  # the BN branch the scheme loads
        measurements = finetune_and_evaluate_scheme(
            model, branch, eval_data, config, ctx.device, run_dir, scheme, label=run.method, method=run.method
        )
    context = RowContext.of(
        run.run_id,
        config,
        env,
        ctx.device,
        method=run.method,
        dataset=summary["dataset"],
        eval_dataset=eval_data.name,
        config_hash=run.config_hash,
        pretrain_epochs=summary.get("pretrain_epochs", config.pretrain.epochs),  # an imported encoder's own
    )
    # the run's own flags (e.g. where the AdvCL family's pseudo-labels came from) go on every row
    rows = [
        ResultRow.of(context, dataclasses.replace(measurement, flags=measurement.flags + run.flags))
        for measurement in measurements
    ]
    run_dir.write_scheme_rows(scheme, rows)
    return True


# --------------------------------------------------------------------------- finish


def run_schemes(run_dir: RunDir) -> list[str]:
    """The run's schemes, from its stored config (so finishing needs no plan; an imported run records them)."""
    recorded = run_dir.read_json(run_dir.config)
    return list(recorded["schemes"] if "schemes" in recorded else recorded["finetune"]["schemes"])


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
            raise StageError(
                f"run {run_dir.run_id} cannot finish: "
                + (f"schemes {missing} have no rows" if missing else "it has no finished encoder")
            )
        return False
    rows = [row for scheme in schemes for row in run_dir.read_scheme_rows(scheme)]
    run_dir.mark_complete(
        rows,
        {
            "finished": now(),
            "rows": len(rows),
            "pretrain_wall_s": summary["pretrain_wall_s"],
            "encoder_from": summary["encoder_from"],
        },
    )
    return True


def record_failure(run_dir: RunDir, reason: str, error: BaseException) -> None:
    """``failed.json`` for a run whose attempt raised ``error`` (called inside its ``except``).

    A full disk is resumable: every write is atomic, so the last checkpoint is intact. When the
    full disk refuses the mark itself, the run simply stays incomplete (resume continues it)."""
    try:
        run_dir.mark_failed(reason, traceback.format_exc(), resumable=isinstance(error, DiskFullError))
    except OSError:
        progress.log(f"could not record the failure in {run_dir.failed}: the run stays incomplete")


def run_stage(stage: str, run: MethodRun, ctx: StageContext, scheme: str | None = None) -> str:
    """One stage of one run as a scheduler job runs it: ``done``, ``skipped`` or ``failed``.

    A failure is recorded in the run directory (``failed.json``, with the stage) instead of
    propagating; interrupts (and a scheduler's requeue, ``SystemExit``) still propagate. The
    stage that stores the last missing piece also finishes the run."""
    run_dir = ctx.store.run(run.run_id)
    threads = torch.get_num_threads()  # a resumed run may switch to the count it was started with
    # a finetune job locks its scheme's files only, so one encoder's schemes run in parallel (RunDir.lock)
    parts = (scheme or "",) if stage == "finetune" else ("", *run.config.finetune.schemes)
    try:
        with run_dir.lock(parts, who=run.method):
            if stage == "pretrain":  # a sweep's pretrain job runs the post stage too (no job of its own)
                worked = pretrain_stage(run, ctx)
                worked = post_stage(run, ctx) or worked
            elif stage == "finetune":
                worked = finetune_stage(run, scheme, ctx)
            else:
                worked = False
            finished = finish_stage(run_dir)
    except Exception as error:  # noqa: BLE001 - a failed stage is recorded; the scheduler sees the job fail
        reason = f"{stage}{f' {scheme}' if scheme else ''}: {progress.error_line(error)}"
        record_failure(run_dir, reason, error)
        progress.log(f"{run.method}: failed: {reason}")
        return "failed"
    finally:
        torch.set_num_threads(threads)
    return "done" if worked or finished else "skipped"
