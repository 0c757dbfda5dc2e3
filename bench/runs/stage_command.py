"""``bench stage``: one stage of one run, as a sweep's job runs it (``bench.runs.sweep`` plans the jobs).

A job holds a lock on its (run, stage) while it works (``stage_lock``), so a rerun of a sweep whose
jobs still run, or a second sweep of the same runs, waits for the job in progress and then finds its
work done instead of training the same run beside it (review 2, D7). The schemes of one run are
separate jobs with separate locks: they finetune the same stored encoder in parallel by design.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.config import SCHEMES, ConfigError
from bench.engine import lifetime, progress
from bench.engine.device import resolve_device
from bench.runs.collect import finish_ready
from bench.runs.plan import RunPlan
from bench.runs.stages import DataCache, StageContext, run_stage
from bench.store.results import ResultsStore

LOCKS = ".locks"  # under the store's root: a dot directory, never a run nor indexed


@contextmanager
def stage_lock(store: ResultsStore, run_id: str, job: str) -> Iterator[None]:
    """The one place a stage job takes its job lock: ``<results>/.locks/<run_id>.stage-<job>.lock`` (``job``:
    ``pretrain`` or a scheme), held until the stage ends, released by the kernel if its holder dies.

    Its own file, not one of the run's write locks (``RunDir.lock``, which ``run_stage`` takes inside
    it): an ``flock`` taken twice in one process through two descriptors would wait for itself."""
    path = Path(store.root) / LOCKS / f"{run_id}.stage-{job}.lock"

    def waiting(holder: str) -> None:
        progress.log(f"run {run_id}: its {job} stage is running in another process ({holder}); waiting for it")

    with lifetime.exclusive(path, waiting):
        yield


def run_stage_of_plan(plan: RunPlan, stage: str, scheme: str | None, run_id: str | None) -> list[tuple[str, str, str]]:
    """Run one stage (pretrain or finetune) of the plan's runs (of ``run_id`` alone when given, which the
    plan must contain); returns (run id, method, reason) of each run whose stage failed."""

    if stage == "finetune" and scheme is None:
        raise ConfigError(f"--scheme is missing: the finetune stage needs one of {list(SCHEMES)}")
    runs = [run for run in plan.runs if run_id in (None, run.run_id)]
    if not runs:
        raise ConfigError(
            f"--run-id {run_id} is invalid: these settings give {[run.run_id for run in plan.runs]} "
            "(did the code or the settings change since the job was planned?)"
        )
    for run in runs:
        if stage == "finetune" and scheme not in run.config.finetune.schemes:
            raise ConfigError(
                f"--scheme {scheme} is invalid for the finetune stage of {run.run_id}: "
                f"allowed {list(run.config.finetune.schemes)}"
            )
    device = resolve_device(plan.base.device)
    context = StageContext(ResultsStore(plan.results_dir), device, DataCache(device), force=plan.force, resume=True)
    failed = []
    for run in runs:
        with stage_lock(context.store, run.run_id, scheme if stage == "finetune" else stage):
            status = run_stage(stage, run, context, scheme if stage == "finetune" else None)
        progress.log(f"{run.method}: stage {stage}{f' {scheme}' if stage == 'finetune' else ''}: {status}")
        if status == "failed":
            failed.append((run.run_id, run.method, context.store.run(run.run_id).failure() or "unknown"))
    return failed


def collect_stage(results_dir: Path) -> int:
    """The sweep's last job: finish every run whose stages are all done, then rebuild ``results.csv``."""

    store = ResultsStore(results_dir)
    finished = finish_ready(store)
    rows = store.collect()
    progress.log(f"{store.table}: {rows} rows ({len(finished)} run(s) finished now)")
    return rows
