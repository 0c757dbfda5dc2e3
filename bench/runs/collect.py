"""Store-wide operations: rebuild the index, merge stores from other machines, report status.

Each job writes only inside its own run directory, so stores written on machines without a
shared filesystem merge by copying run directories: ``bench collect --from DIR ...`` copies
every complete run this store lacks (or has only partly), skips runs whose rows are already
here, and reports a run id whose numbers differ between two stores as a conflict, never
overwriting either. ``bench status`` reads the run directories only.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import SCHEMES
from bench.errors import ConfigError
from bench.runs.stages import finish_stage
from bench.store.results import ResultsStore, RunDir, RunLocked, StoreError, warn
from bench.store.rows import ResultRow, RowError

# What a run measured; the rest of a row (time stamp, wall time, device, code version) may
# differ between two executions of the same run id without the results differing.
# ``flags`` too: two stores that measured the same numbers under different flags (a suspect run, another
# pseudo-label source) disagree about what the numbers mean (review 2, D13).
MEASURED = (
    "method",
    "dataset",
    "eval_dataset",
    "scheme",
    "attack",
    "metric",
    "value",
    "epsilon",
    "n_eval",
    "seed",
    "flags",
)


@dataclass
class MergeReport:
    copied: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # incomplete in the source: not copied
    conflicts: list[str] = field(default_factory=list)  # "run_id: why"
    refused: list[str] = field(default_factory=list)  # "run_id: why": a link or special file in the source run


def existing_store(results_dir: str | Path) -> ResultsStore:
    """A store a command reads (``status``): a missing directory is a typo, not an empty store (review 2,
    D15: ``status --results-dir typo`` printed nothing and exit 0)."""
    if not Path(results_dir).is_dir():
        raise ConfigError(f"--results-dir {str(results_dir)!r} is invalid: no results store at {results_dir}")
    return ResultsStore(results_dir)


def refresh_index(results_dir: Path) -> None:
    """Before a report: ``results.csv`` is derived from the run directories, and one cut at a row boundary
    or left with its header alone is valid CSV but wrong (review 2, D16: the report showed partial tables,
    exit 0). When it differs from what the runs give, it is rebuilt from them, with one warning line."""
    store = ResultsStore(results_dir)
    if not store.runs.is_dir() or store.index_is_current():
        return
    try:
        rows = store.collect()
    except OSError as error:
        raise StoreError(
            f"{store.table} does not match the run directories and cannot be rebuilt here ({error}): "
            "run `bench collect` where the store is writable"
        ) from None
    warn(f"{store.table} did not match the run directories; rebuilt from them ({rows} rows)")


def measured(rows: list[ResultRow]) -> list[tuple[Any, ...]]:
    return sorted(tuple(getattr(row, column) for column in MEASURED) for row in rows)


def merge_stores(target: ResultsStore, sources: list[Path]) -> MergeReport:
    """Copy the complete runs of ``sources`` into ``target``, then rebuild its index once.

    Raises ``StoreError`` (after copying everything that is not in conflict) when a run id has
    different measured rows in two places, or a run was refused; ``ConfigError`` before anything is
    copied when a source is not a results store."""
    for source_root in sources:
        if not ResultsStore(source_root).runs.is_dir():
            what = "it does not exist" if not Path(source_root).exists() else "it has no runs/ directory"
            raise ConfigError(f"--from {str(source_root)!r} is invalid: {what}; allowed a results store")
    report = MergeReport()
    remove_stale_staging(target)
    for source_root in sources:
        source = ResultsStore(source_root)
        for run in source.run_dirs():
            _merge_run(run, source, target, report)
    target.collect()
    problems = []
    if report.refused:
        problems.append(f"{len(report.refused)} run(s) refused, not copied: " + "; ".join(report.refused))
    if report.conflicts:
        problems.append(
            f"{len(report.conflicts)} conflicting run(s), kept as they were: " + "; ".join(report.conflicts)
        )
    if problems:
        raise StoreError("; ".join(problems))
    return report


def _merge_run(run: RunDir, source: ResultsStore, target: ResultsStore, report: MergeReport) -> None:
    foreign = foreign_entries(run.path)  # before reading any of its files: done.json may be a link to /dev/zero
    if foreign:
        report.refused.append(f"{run.run_id}: {foreign[0]}: a run directory holds regular files only")
        return
    if not run.is_complete():
        report.incomplete.append(run.run_id)
        return
    try:  # a torn rows.csv once came in unchecked and wedged the target (review 2, D3)
        rows = run.read_rows() if run.rows.exists() else source.legacy_rows(run)
    except (RowError, UnicodeDecodeError, OSError) as error:
        report.refused.append(f"{run.run_id}: its rows do not validate ({str(error).splitlines()[0]})")
        return
    if rows is None:  # completed before rows.csv, and its rows are nowhere in its store (review 2, D4)
        report.refused.append(f"{run.run_id}: no rows.csv, and its rows are neither in its files nor in {source.table}")
        return
    here = target.run(run.run_id)
    try:  # never beside a writer of the same run here (review 2, D6)
        with here.lock(("", *SCHEMES), wait=False):
            _merge_into(run, rows, here, report)
    except (RunLocked, StoreError) as error:
        report.refused.append(f"{run.run_id}: {error}")


def _merge_into(run: RunDir, rows: list[ResultRow], here: RunDir, report: MergeReport) -> None:
    if here.is_complete():
        try:
            same = measured(here.read_rows()) == measured(rows)
        except (RowError, OSError) as error:
            report.conflicts.append(f"{run.run_id}: rows unreadable ({error})")
            return
        (report.identical if same else report.conflicts).append(
            run.run_id if same else f"{run.run_id}: different rows in {here.path} and {run.path}"
        )
        return
    copy_run(run, here, rows if not run.rows.exists() else None)
    report.copied.append(run.run_id)


def foreign_entries(root: Path) -> list[str]:
    """Entries under ``root`` (itself included) that are not plain directories or regular files, as
    "path (what)". A run directory holds regular files only; copying through a symbolic link would read
    a file outside the store (or /dev/zero, without end), and a FIFO or device blocks or never ends."""
    found = []
    for path in [root, *sorted(root.rglob("*"))] if not root.is_symlink() else [root]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            found.append(f"{path} (a symbolic link)")
        elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            found.append(f"{path} (not a regular file)")
    return found


def copy_run(source: RunDir, destination: RunDir, rows: list[ResultRow] | None = None) -> None:
    """Copy a run directory whole: into a temp directory beside the destination, then renamed in.
    ``rows``: the ``rows.csv`` to give a run completed before that file existed (written before the rename).

    Refused (``StoreError``, nothing copied) when the run holds a symbolic link or a special file
    (``foreign_entries``); links are never followed, even one planted while the copy runs."""
    foreign = foreign_entries(source.path)
    if foreign:
        raise StoreError(f"{foreign[0]}: a run directory holds regular files only; nothing of it was copied")
    destination.path.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.path.parent / f".{destination.run_id}.{socket.gethostname()}.{os.getpid()}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source.path, staging, symlinks=True, ignore=_special_entries)
        if rows is not None:
            RunDir(staging).write_rows(rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(destination.path, ignore_errors=True)  # an incomplete attempt here: the complete one wins
    os.replace(staging, destination.path)


def remove_stale_staging(store: ResultsStore) -> list[Path]:
    """Remove the ``.<run id>.<host>.<pid>.incoming`` folders that a killed ``copy_run`` of this host left.

    Only this host's, and only where that process is gone: on a shared filesystem another machine's
    merge may be copying right now, and its process ids mean nothing here. Never indexed either way
    (``RunDir.is_run``); removed so that a killed merge leaves nothing behind once merging resumes."""
    removed = []
    host = socket.gethostname()
    for folder in store.runs.glob(f".*.{host}.*.incoming") if store.runs.is_dir() else []:
        pid = folder.name.removesuffix(".incoming").rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _special_entries(folder: str, names: list[str]) -> list[str]:
    """``copytree``'s ignore: links and special files that appeared after ``foreign_entries`` looked."""
    modes = {name: os.lstat(os.path.join(folder, name)).st_mode for name in names}
    return [name for name, mode in modes.items() if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))]


def finish_ready(store: ResultsStore) -> list[str]:
    """Complete every run whose stages have all finished (``bench.runs.stages.finish_stage``); the ids finished.

    A sweep's last job calls this before ``collect``: a run's last finetune job normally finishes
    it, but not when two of them end at once on different nodes or the job died just after its rows."""

    finished = []
    for run in store.run_dirs():
        try:
            if finish_stage(run):
                finished.append(run.run_id)
        except (OSError, ValueError, KeyError) as error:  # one damaged run must not keep the others incomplete
            run.mark_failed(f"finish: {type(error).__name__}: {error}")
    return finished


def run_status(run: RunDir) -> dict[str, Any]:
    """One run's state from its directory alone: complete, failed (why), or the stage it reached."""
    status: dict[str, Any] = {"run_id": run.run_id}
    if run.is_complete():
        return {**status, "state": "complete"}
    failure = run.failure()
    if failure is not None:
        return {**status, "state": "failed", "reason": failure}
    progress = run.read_json_or_none(run.progress)
    if not isinstance(progress, dict):
        return {**status, "state": "started" if run.config.exists() else "empty"}
    stage = progress.get("stage", "unknown")
    if stage == "pretraining":
        return {**status, "state": "pretraining", "step": progress.get("step"), "steps": progress.get("steps")}
    return {**status, "state": stage, **{key: value for key, value in progress.items() if key not in ("stage",)}}


def describe(status: dict[str, Any]) -> str:
    state = status["state"]
    if state == "pretraining":
        return f"pretraining step {status['step']} of {status['steps']}"
    if state == "finetuning":
        return f"finetuning {status.get('scheme', '?')}"
    if state == "failed":
        return f"failed: {status['reason']}"
    return state
