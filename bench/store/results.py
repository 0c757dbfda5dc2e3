"""The results store: one directory per run (``RunDir``) and an index of measured numbers.

Each run directory holds everything the run wrote, its measured numbers included
(``rows.csv``, one ``ResultRow`` per number, written before the completion mark
``done.json``). ``results/results.csv`` is an index of the rows of every complete run that
``ResultsStore.collect`` rebuilds from the run directories (``bench collect``); nothing is
ever appended to it in place, so jobs on many machines can share or merge stores. Every
write goes to a temp file in the same directory and is renamed over the old file, so a
crash or kill leaves either the old file or the new one, never a torn one; a torn or
damaged file that is read anyway is refused with its file and line.

This module is the only owner of the run directory's file names and of the row schema:
the pipeline, the trainer, the methods and the report all go through ``RunDir`` and
``ResultRow``. It imports no torch, so the report stays light.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.store.atomic import write_atomic
from bench.store.provenance import now

if TYPE_CHECKING:  # a type only: the config imports torch, and reading the store must not
    from bench.config import RunConfig


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


@dataclass(frozen=True)
class RowContext:
    """The columns every row of one run shares (which run, under what settings, on what)."""

    run_id: str
    timestamp: str
    preset: str
    method: str
    dataset: str
    eval_dataset: str
    seed: int | None
    pretrain_epochs: int | None
    finetune_epochs: int | None
    config_hash: str
    code_version: str
    torch_version: str
    device: str
    protocol: str = "unified"  # the finetuning protocol (bench.evaluation.protocols): unified, robustssl or ainfonce

    @classmethod
    def of(
        cls,
        run_id: str,
        config: RunConfig,
        env: dict[str, str],
        device: str,
        *,
        method: str,
        dataset: str,
        eval_dataset: str,
        config_hash: str,
        pretrain_epochs: int | None,
    ) -> RowContext:
        """The context of a run under ``config``, stamped now; ``env`` is ``bench.store.provenance.environment()``."""
        return cls(
            run_id=run_id,
            timestamp=now(),
            preset=config.preset,
            protocol=config.finetune.protocol,
            method=method,
            dataset=dataset,
            eval_dataset=eval_dataset,
            seed=config.seed,
            pretrain_epochs=pretrain_epochs,
            finetune_epochs=config.finetune.epochs,
            config_hash=config_hash,
            code_version=env["code_version"],
            torch_version=env["torch_version"],
            device=str(device),
        )


@dataclass(frozen=True)
class Measurement:
    """One measured number of a run: which scheme, attack and metric, on how many images."""

    scheme: str
    attack: str
    metric: str
    value: float
    epsilon: float | None
    n_eval: int | None
    wall_s: float | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultRow:
    """One line of ``results.csv``: a run's context plus one measurement (field order = column order)."""

    run_id: str
    timestamp: str
    preset: str
    method: str
    dataset: str
    eval_dataset: str
    scheme: str
    attack: str
    metric: str
    value: float
    epsilon: float | None
    n_eval: int | None
    seed: int | None
    pretrain_epochs: int | None
    finetune_epochs: int | None
    config_hash: str
    code_version: str
    torch_version: str
    device: str
    wall_s: float | None
    flags: tuple[str, ...]
    protocol: str = "unified"  # added later: old rows files lack the column (``ADDED_COLUMNS``)

    @classmethod
    def of(cls, context: RowContext, measurement: Measurement) -> ResultRow:
        return cls(**dataclasses.asdict(context), **dataclasses.asdict(measurement))

    def to_csv(self) -> dict[str, str]:
        """The stored text of each column: value to 4 decimals, wall time to 2, flags ';'-joined."""
        text = {}
        for column in COLUMNS:
            value = getattr(self, column)
            if column == "value":
                value = round(value, 4)
            elif column == "wall_s" and value is not None:
                value = round(value, 2)
            elif column == "flags":
                value = ";".join(value)
            text[column] = "" if value is None else str(value)
        return text

    @classmethod
    def from_csv(cls, raw: dict[str, str | None], where: str = "results.csv") -> ResultRow:
        """Parse and type one stored row; a missing column or an unparsable number names ``where``.

        A column added since a store was written (``ADDED_COLUMNS``) reads as what old rows meant."""
        raw = {
            **{column: value for column, value in ADDED_COLUMNS.items() if raw.get(column) is None},
            **{column: value for column, value in raw.items() if value is not None},
        }
        missing = [column for column in COLUMNS if raw.get(column) is None]
        if missing:
            raise RowError(f"{where}: row lacks columns {missing}")
        values: dict[str, Any] = {}
        for column in COLUMNS:
            text = raw[column].strip()
            kind = _COLUMN_TYPES[column]
            if kind is tuple:
                values[column] = tuple(flag for flag in text.split(";") if flag)
            elif kind is str:
                values[column] = text
            elif text == "" and column != "value":
                values[column] = None
            else:
                values[column] = _number(text, kind, column, where)
        return cls(**values)


class RowError(ValueError):
    """A stored row that cannot be read back as a ``ResultRow``; the message names file and line."""


COLUMNS = tuple(field.name for field in dataclasses.fields(ResultRow))
# Columns added after stores were written, with the value every older row means: their rows files
# (header without the column) stay readable and are rewritten with it by the next ``collect``.
ADDED_COLUMNS = {"protocol": "unified"}
LEGACY_COLUMNS = tuple(column for column in COLUMNS if column not in ADDED_COLUMNS)
_COLUMN_TYPES = {
    **{column: str for column in COLUMNS},
    "value": float,
    "epsilon": float,
    "wall_s": float,
    "n_eval": int,
    "seed": int,
    "pretrain_epochs": int,
    "finetune_epochs": int,
    "flags": tuple,
}


def _number(text: str, kind: type, column: str, where: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise RowError(f"{where}: {column}={text!r} is invalid: allowed {kind.__name__} values") from None
    if kind is float and not math.isfinite(value):
        raise RowError(f"{where}: {column}={text!r} is invalid: allowed finite numbers")
    return value


# --------------------------------------------------------------------------- the store


class StoreError(RuntimeError):
    """The store cannot be read or rebuilt safely; the message says which file and what to do."""


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
        return [RunDir(path) for path in sorted(self.runs.iterdir()) if path.is_dir()] if self.runs.is_dir() else []

    def read_rows(self) -> list[ResultRow]:
        """The index, validated row by row (``RowError`` names the file and line)."""
        return read_rows_csv(self.table) if self.table.exists() else []

    def record(self, run_id: str, rows: list[ResultRow], summary: dict[str, Any]) -> None:
        """A finished run: its rows and completion mark in its directory, then the index rebuilt."""
        self.run(run_id).mark_complete(rows, summary)
        self.collect()

    def collect(self) -> int:
        """Rebuild ``results.csv`` from every complete run's ``rows.csv``; returns the number of rows.

        Runs completed by older versions (a completion mark, no ``rows.csv``) get their rows from
        the current index, which must then validate; otherwise nothing is written."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.lock_path):
            complete = [run for run in self.run_dirs() if run.is_complete()]
            legacy = [run for run in complete if not run.rows.exists()]
            if legacy:
                self._migrate(legacy)
            rows = [row for run in complete for row in run.read_rows()]
            write_atomic(self.table, rows_csv(rows))
        return len(rows)

    def _migrate(self, legacy: list[RunDir]) -> None:
        """Give each legacy complete run its own ``rows.csv`` from the old index."""
        try:
            indexed = self.read_rows()
        except (RowError, UnicodeDecodeError) as error:
            names = ", ".join(run.run_id for run in legacy[:3])
            raise StoreError(
                f"{self.table} cannot be read ({error}) and complete runs ({names}…) have no rows.csv: "
                "restore the file or delete those runs' done.json to redo them"
            ) from None
        for run in legacy:
            run.write_rows([row for row in indexed if row.run_id == run.run_id])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this host (``filelock``)."""
    from filelock import FileLock

    with FileLock(str(path)):
        yield


def read_rows_csv(path: Path) -> list[ResultRow]:
    """Parse a rows file strictly: the exact header, every line a full row (a torn line is an error)."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            columns = tuple(header) if header is not None and tuple(header) in (COLUMNS, LEGACY_COLUMNS) else None
            if columns is None:
                raise RowError(f"{path}:1: header is {header!r}: allowed exactly the columns {list(COLUMNS)}")
            rows = []
            for line, values in enumerate(reader, start=2):
                if len(values) != len(columns):
                    raise RowError(f"{path}:{line}: {len(values)} fields: allowed exactly {len(columns)} (a torn row?)")
                rows.append(ResultRow.from_csv(dict(zip(columns, values)), f"{path}:{line}"))
        if rows and not _ends_with_newline(path):
            raise RowError(
                f"{path}:{len(rows) + 1}: the last row has no line end (a write cut inside its last "
                "column): rebuild the index with `bench collect`, or restore the file"
            )
        return rows
    except UnicodeDecodeError:
        raise RowError(f"{path}: not UTF-8 text (a damaged file?)") from None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 1))
        return stream.read(1) == b"\n"


def rows_csv(rows: Iterable[ResultRow]) -> str:
    """``results.csv`` text for ``rows`` (header first)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="raise")
    writer.writeheader()
    writer.writerows(row.to_csv() for row in rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- pandas


if TYPE_CHECKING:  # pandas is imported inside ``load`` only: ``import bench.store.results`` stays light
    import pandas

FLOAT_COLUMNS = tuple(column for column in COLUMNS if _COLUMN_TYPES[column] is float)
INT_COLUMNS = tuple(column for column in COLUMNS if _COLUMN_TYPES[column] is int)


def load(path: str | Path) -> pandas.DataFrame:
    """``results.csv`` as a typed DataFrame: one row per measured number, the columns of ``ResultRow``.

    Types: ``value``, ``epsilon`` and ``wall_s`` are float64 (NaN where not recorded); ``n_eval``,
    ``seed``, ``pretrain_epochs`` and ``finetune_epochs`` are nullable ``Int64``; every other column,
    ``timestamp`` included, is the ``string`` dtype; ``flags`` is one string, the tags joined by ``;``
    as stored (``""`` for none), so ``frame["flags"].str.contains("suspect")`` works and cells stay
    hashable (write ``frame["flags"]``: ``frame.flags`` is pandas' own ``DataFrame.flags``).

    The rows are read by ``read_rows_csv`` (exact header, every line a full row ending in its line
    end, each parsed by ``ResultRow.from_csv``). Errors are ``RowError`` naming the file and line: a damaged
    row is never read as a shorter one. pandas is imported here, so ``import bench.store.results`` stays light.
    """
    import pandas

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: run `bench run` first")
    rows = read_rows_csv(path)
    records = {column: [getattr(row, column) for row in rows] for column in COLUMNS}
    records["flags"] = [";".join(flags) for flags in records["flags"]]
    frame = pandas.DataFrame(records, columns=list(COLUMNS))
    types = {
        column: "float64" if column in FLOAT_COLUMNS else "Int64" if column in INT_COLUMNS else "string"
        for column in COLUMNS
    }
    return frame.astype({column: "float64" for column in FLOAT_COLUMNS}).astype(types)
