"""The results store: one directory per run (``RunDir``) and an index of measured numbers.

Each run directory holds everything the run wrote, its measured numbers included
(``rows.csv``, one ``ResultRow`` per number, written before the completion mark
``done.json``). ``results/results.csv`` is an index of the rows of every complete run that
``ResultsStore.collect`` rebuilds from the run directories (``bench collect``); nothing is
ever appended to it in place, so jobs on many machines can share or merge stores. Every
write goes to a temp file in the same directory and is renamed over the old file, so a
crash or kill leaves either the old file or the new one, never a torn one; a torn or
damaged file that is read anyway is refused with its file and line.

This module is the only owner of the run directory's file names, ``bench.store.rows`` of the row
schema: the pipeline, the trainer, the methods and the report all go through ``RunDir`` and
``ResultRow``. Neither imports torch, so the report stays light.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import stat
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import StoreError, closest
from bench.store.atomic import write_atomic
from bench.store.locks import Busy, exclusive, hold_all
from bench.store.provenance import now
from bench.store.rows import ResultRow, RowError, read_rows_csv, rows_csv

if TYPE_CHECKING:  # a type only: the config imports torch, and reading the store must not
    pass


class RunFile:
    """One file of a run directory, by role: ``run_dir.encoder`` is ``run_dir.path / "encoder.pt"``,
    and ``RunDir.encoder.name`` is the name itself (so no module spells a run file's name again)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run_dir: RunDir | None, owner: type | None = None) -> Any:
        return self if run_dir is None else run_dir.path / self.name


class RunDir:
    """``results/runs/<run_id>/``: every file a run writes, by role rather than by literal name."""

    config = RunFile("config.json")  # the resolved config, identity hashes and environment (written first)
    experiment = RunFile("config.yaml")  # the experiment that resolves to this run (bench run --config; after config)
    done = RunFile("done.json")  # the completion mark (written last)
    checkpoint = RunFile("pretrain.ckpt")  # the resumable pretraining state
    encoder = RunFile("encoder.pt")  # the finished encoder (bench.engine.checkpoints.EncoderCheckpoint)
    history = RunFile("pretrain_history.csv")  # the pretraining curve
    pseudo_labels = RunFile("pseudo_labels.npz")  # computed pseudo-labels (AdvCL family), reused on resume
    rows = RunFile("rows.csv")  # the run's measured numbers (written before done; results.csv indexes them)
    pretrain_summary = RunFile("pretrain.json")  # the pretraining stage's record (after encoder: the stage is done)
    post_encoder = RunFile("encoder_post.pt")  # a post stage's encoder (DynACL++'s LP-AFT), finetuned instead
    post_summary = RunFile("post.json")  # the post stage's record (written after post_encoder)
    failed = RunFile("failed.json")  # why the last attempt failed (a later run starts afresh, or resumes after a kill)
    progress = RunFile("progress.json")  # the stage reached (pretraining step k of n, finetuning scheme)
    metrics = RunFile("metrics.jsonl")  # the live per-step log (the local tracker, bench.runs.tracking)
    tensorboard = RunFile("tensorboard")  # TensorBoard's event files (--track tensorboard)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    def scheme_rows(self, scheme: str) -> Path:
        """One finetuning scheme's rows (its stage's output); ``rows.csv`` assembles them in scheme order."""
        return self.path / f"rows_{scheme}.csv"

    def classifier(self, scheme: str) -> Path:
        """The finetuned classifier of one scheme (SLF, ALF, AFF, or AT for a ready model)."""
        return self.path / f"classifier_{scheme}.pt"

    def sanity(self, scheme: str) -> Path:
        """Every sanity check of one scheme's evaluation, passed or failed."""
        return self.path / f"sanity_{scheme}.json"

    def correct(self, scheme: str) -> Path:
        """Which test images each main attack and corruption left correct in one scheme's evaluation
        (bench.store.records; what paired comparisons read)."""
        return self.path / f"correct_{scheme}.npz"

    def correct_files(self) -> dict[str, Path]:
        """scheme → its per-image record, for every scheme that wrote one."""
        return {path.stem.removeprefix("correct_"): path for path in sorted(self.path.glob("correct_*.npz"))}

    def sanity_files(self) -> dict[str, Path]:
        """scheme → its sanity file, for every scheme that wrote one."""
        return {path.stem.removeprefix("sanity_"): path for path in sorted(self.path.glob("sanity_*.json"))}

    # ------------------------------------------------------------------ life cycle
    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def clear(self) -> RunDir:
        """Remove everything a previous attempt left, then recreate the empty directory."""
        shutil.rmtree(self.path, ignore_errors=True)
        return self.create()

    def is_run(self) -> bool:
        """The one rule for what counts as a run: a directory not starting with a dot whose name is the
        run id it records (``config.json``'s ``run_id``; every row of ``rows.csv``).

        Everything else under ``runs/`` is ignored by the index, status and merges: the
        ``.<id>.<host>.<pid>.incoming`` a killed ``collect --from`` leaves, and a backup copy
        (``cp -r runs/X runs/X.bak``), whose rows would otherwise be indexed twice (review 2, D5).
        Rows that cannot be read do not decide here: ``collect`` names the damaged file. Only regular
        files are read (a link to /dev/zero in a store to merge must not be read before it is refused)."""
        if self.path.name.startswith(".") or not self.path.is_dir():
            return False
        recorded = self.read_json_or_none(self.config) if _regular(self.config) else None
        if isinstance(recorded, dict) and recorded.get("run_id", self.run_id) != self.run_id:
            return False
        try:
            return all(row.run_id == self.run_id for row in self.read_rows()) if _regular(self.rows) else True
        except (RowError, UnicodeDecodeError, OSError):
            return True

    def is_complete(self) -> bool:
        """Complete = a readable completion mark (an unreadable one is a run to redo, not a result)."""
        return isinstance(self.read_json_or_none(self.done), dict)

    def mark_complete(self, rows: list[ResultRow], summary: dict[str, Any]) -> None:
        """Store the run's rows, then its completion mark: a kill in between leaves an incomplete run."""
        self.write_rows(rows)
        self.failed.unlink(missing_ok=True)
        self.write_json(self.done, summary)

    def mark_failed(self, reason: str, details: str = "", *, resumable: bool = False) -> None:
        """Record why this attempt failed (one line, plus e.g. a traceback); the run stays incomplete.

        A run that failed by itself (an error in its own code path) is started afresh by a later
        run. ``resumable`` marks a process killed from outside (SIGKILL, the OOM killer, a lost
        node): its checkpoint is intact (every write is atomic), so a resuming run continues it."""
        self.write_json(self.failed, {"reason": reason, "details": details, "time": now(), "resumable": resumable})

    def failure(self) -> str | None:
        """The recorded failure reason, if the last attempt failed."""
        recorded = self.read_json_or_none(self.failed)
        return str(recorded.get("reason", "unknown")) if isinstance(recorded, dict) else None

    def failure_is_resumable(self) -> bool:
        """Whether the recorded failure was a kill from outside (see ``mark_failed``)."""
        recorded = self.read_json_or_none(self.failed)
        return isinstance(recorded, dict) and recorded.get("resumable") is True

    def set_progress(self, stage: str, **fields: Any) -> None:
        """Where the run is and which process runs it (read by ``bench status``); written atomically,
        cheap enough per checkpoint."""
        self.write_json(
            self.progress, {"stage": stage, **fields, "time": now(), "host": socket.gethostname(), "pid": os.getpid()}
        )

    # ------------------------------------------------------------------ files
    def write_json(self, path: Path, payload: Any) -> Path:
        self.create()
        return write_atomic(path, json.dumps(payload, indent=2, default=str))

    @staticmethod
    def read_json(path: Path) -> Any:
        return json.loads(path.read_text())

    @classmethod
    def read_json_or_none(cls, path: Path) -> Any:
        """The parsed file, or None when it is missing or unreadable (damage is never a crash here)."""
        try:
            return cls.read_json(path)
        except (OSError, ValueError):
            return None

    def write_rows(self, rows: list[ResultRow]) -> Path:
        self.create()
        return write_atomic(self.rows, rows_csv(rows))

    def read_rows(self) -> list[ResultRow]:
        """The run's stored rows, validated (``RowError`` names the file and line)."""
        return read_rows_csv(self.rows)

    def rows_from_schemes(self) -> list[ResultRow] | None:
        """The rows its schemes stored (``rows_<scheme>.csv``, in its config's scheme order), as the
        finish stage assembles them; None when its config or one scheme's rows are missing. What a run
        completed before ``rows.csv`` existed is rebuilt from (review 2, D4)."""
        config = self.read_json_or_none(self.config) if _regular(self.config) else None
        schemes = config.get("finetune", {}).get("schemes") if isinstance(config, dict) else None
        if not isinstance(schemes, list) or not all(_regular(self.scheme_rows(str(s))) for s in schemes):
            return None
        return [row for scheme in schemes for row in self.read_scheme_rows(str(scheme))]

    def lock_file(self, part: str = "") -> Path:
        """``<store>/.locks/<run id>[.<part>].lock``: outside the run directory, so clearing or replacing it
        never removes a lock a writer holds, and outside ``runs/``, which lists runs only."""
        return self.path.parent.parent / ".locks" / f"{self.run_id}{'.' + part if part else ''}.lock"

    @contextmanager
    def lock(self, parts: tuple[str, ...] = ("",), *, wait: bool = True, who: str = "") -> Iterator[None]:
        """Hold the run's write locks (review 2, D6: two writers of one run interleaved, and a classifier
        was left that the stored encoder did not give).

        ``parts``: ``""`` is the whole run; a scheme's name is that scheme's files. A writer of the whole
        run (``bench run``, a pretrain job, a merge) takes ``""`` and every scheme's; a sweep's finetune job
        only its scheme's, so the schemes of one encoder still run in parallel and never beside a whole-run
        writer. Always taken in the same order, so two writers never deadlock. ``wait``: block (saying so
        in one line) or raise ``RunLocked`` at once."""
        self.lock_file().parent.mkdir(parents=True, exist_ok=True)
        order = sorted(set(parts), key=lambda name: (name != "", name))
        say = f"{who or self.run_id}: waiting for another process writing run {self.run_id}"
        try:
            with hold_all([self.lock_file(part) for part in order], wait=wait, on_wait=lambda _: warn(say)):
                yield
        except Busy as busy:
            raise RunLocked(f"run {self.run_id} is being written by another process (it holds {busy.path})") from None

    def write_scheme_rows(self, scheme: str, rows: list[ResultRow]) -> Path:
        self.create()
        return write_atomic(self.scheme_rows(scheme), rows_csv(rows))

    def read_scheme_rows(self, scheme: str) -> list[ResultRow]:
        return read_rows_csv(self.scheme_rows(scheme))

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        """Pretraining curve as CSV (epoch, step, loss, lr, then the method's own logs)."""
        columns: list[str] = []
        for row in history:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns or ["epoch", "step", "loss", "lr"])
        writer.writeheader()
        writer.writerows(history)
        self.create()
        return write_atomic(self.history, buffer.getvalue())


# --------------------------------------------------------------------------- rows


# --------------------------------------------------------------------------- the store


class RunLocked(StoreError):
    """Another process is writing this run (``RunDir.lock`` without waiting)."""


def warn(message: str) -> None:
    """One warning line on stderr, even under --quiet: the store changed something the user should know."""
    print(f"bench: warning: {message}", file=sys.stderr, flush=True)


class ResultsStore:
    """``root/runs/<run_id>/`` (one ``RunDir`` per run, each with its own ``rows.csv``) and
    ``root/results.csv``, the index of the rows of every complete run.

    A run's rows live in its own directory and are written before its completion mark, so
    jobs on many machines never write the same file. ``collect`` rebuilds ``results.csv`` from
    the complete runs alone, deterministically (runs by id, rows in their stored order):
    twice in a row it writes the same bytes, and a damaged index is simply rebuilt.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.table = self.root / "results.csv"
        self.runs = self.root / "runs"
        self.lock_path = self.root / ".results.lock"

    def run(self, run_id: str) -> RunDir:
        """The run's directory (not created: ``RunDir.create`` does that when the run writes)."""
        return RunDir(self.runs / run_id)

    def run_dirs(self) -> list[RunDir]:
        """The runs of this store, by id: the directories under ``runs/`` that ``RunDir.is_run`` accepts."""
        if not self.runs.is_dir():
            return []
        return [run for run in map(RunDir, sorted(self.runs.iterdir())) if run.is_run()]

    def near(self, run_id: str, n: int = 5) -> str:
        """What an error about a run id that is not stored offers instead: up to ``n`` stored ids
        nearest to ``run_id`` (a typo, a truncated id), else the ``n`` newest, else that there are none."""
        runs = self.run_dirs()
        if not runs:
            return f"{self.runs} holds no runs"
        found = closest(run_id, [run.path.name for run in runs], n=n, cutoff=0.5)
        if found:
            return "closest stored: " + ", ".join(found)
        newest = sorted(runs, key=lambda run: (run.path.stat().st_mtime, run.path.name), reverse=True)[:n]
        return "newest stored: " + ", ".join(run.path.name for run in newest)

    def read_rows(self) -> list[ResultRow]:
        """The index, validated row by row (``RowError`` names the file and line)."""
        return read_rows_csv(self.table) if self.table.exists() else []

    def record(self, run_id: str, rows: list[ResultRow], summary: dict[str, Any]) -> None:
        """A finished run: its rows and completion mark in its directory, then the index rebuilt."""
        self.run(run_id).mark_complete(rows, summary)
        self.collect()

    def collect(self) -> int:
        """Rebuild ``results.csv`` from every complete run's ``rows.csv``; returns the number of rows.

        A complete run whose ``rows.csv`` does not validate is left out and quarantined (``quarantine``),
        never the whole store: one torn file once wedged every later collect (review 2, D3). Runs
        completed by older versions (a completion mark, no ``rows.csv``) get their rows rebuilt
        (``legacy_rows``); when the current index they may come from cannot be read, nothing is written."""
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive(self.lock_path):
            rows = self._index_rows(fix=True)
            write_atomic(self.table, rows_csv(rows))
        return len(rows)

    def index_is_current(self) -> bool:
        """Whether ``results.csv`` holds every row the complete runs give (nothing is changed).

        The index is derived from the run directories, so one cut at a row boundary or left with its
        header alone is valid CSV but wrong (review 2, D16); the report checks this before trusting it.
        Rows of runs that are not here (an index assembled elsewhere) do not make it stale."""
        try:
            expected = Counter(rows_csv(self._index_rows(fix=False)).encode().splitlines())
            return self.table.is_file() and not expected - Counter(self.table.read_bytes().splitlines())
        except (RowError, UnicodeDecodeError, OSError, StoreError):
            return False

    def _index_rows(self, *, fix: bool) -> list[ResultRow]:
        """The complete runs' rows, by run id. ``fix``: give legacy runs their ``rows.csv`` and quarantine
        damaged runs; without it nothing is written and a damaged run raises ``StoreError``."""
        complete = [run for run in self.run_dirs() if run.is_complete()]
        if fix:
            self._migrate([run for run in complete if not run.rows.exists()])
        rows: list[ResultRow] = []
        for run in filter(RunDir.is_complete, complete):  # a migration may have quarantined some
            try:
                found = run.read_rows() if run.rows.exists() else self.legacy_rows(run)
            except (RowError, UnicodeDecodeError, OSError) as error:
                if not fix:
                    raise StoreError(str(error)) from None
                self.quarantine(run, f"its rows.csv does not validate ({str(error).splitlines()[0]})")
                continue
            if found is None:
                raise StoreError(f"run {run.run_id} is complete and its rows are nowhere")
            rows.extend(found)
        return rows

    def quarantine(self, run: RunDir, why: str) -> None:
        """Take a complete run whose rows cannot be trusted out of the results: it is marked failed (not
        resumable, so the next ``bench run`` starts it afresh) and its completion mark removed, with one
        warning line. The failure is written first: a kill in between leaves a complete run with a failure
        recorded, which the next collect quarantines again."""
        run.mark_failed(f"quarantined: {why}")
        run.done.unlink(missing_ok=True)
        warn(f"run {run.run_id} left out of {self.table}: {why}; marked incomplete, so the next run redoes it")

    def verified_complete(self, run: RunDir) -> bool:
        """Complete and its rows validate; a complete run whose rows do not is quarantined (False)."""
        if not run.is_complete() or not run.rows.exists():  # a legacy run: collect gives it its rows
            return run.is_complete()
        try:
            run.read_rows()
        except (RowError, UnicodeDecodeError, OSError) as error:
            self.quarantine(run, f"its rows.csv does not validate ({str(error).splitlines()[0]})")
            return False
        return True

    def legacy_rows(self, run: RunDir) -> list[ResultRow] | None:
        """The rows of a run completed before ``rows.csv`` existed: from its own scheme files, else its
        rows in this store's index; None when neither has them (``RowError`` when the index is damaged).
        Never an empty list for a run that measured something (review 2, D4: merged runs were "complete"
        with 0 rows)."""
        rebuilt = run.rows_from_schemes()
        if rebuilt is not None:
            return rebuilt
        indexed = [row for row in self.read_rows() if row.run_id == run.run_id]
        return indexed or None

    def _migrate(self, legacy: list[RunDir]) -> None:
        """Give each legacy complete run its own ``rows.csv`` (``legacy_rows``); quarantine the ones whose
        rows are nowhere."""
        for run in legacy:
            try:
                rows = self.legacy_rows(run)
            except (RowError, UnicodeDecodeError) as error:
                names = ", ".join(r.run_id for r in legacy[:3])
                raise StoreError(
                    f"{self.table} cannot be read ({error}) and complete runs ({names}…) have no rows.csv: "
                    "restore the file or delete those runs' done.json to redo them"
                ) from None
            if rows is None:
                self.quarantine(run, "it has no rows.csv, and neither its scheme files nor the index hold its rows")
            else:
                run.write_rows(rows)


def _regular(path: Path) -> bool:
    """A regular file itself, not a link to one (nor a FIFO or device, which could block or never end)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
