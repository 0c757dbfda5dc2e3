"""The row schema of the store: one ``ResultRow`` per measured number, its CSV form, and ``load`` for
notebooks (a typed pandas DataFrame). ``bench.store.results`` owns the files the rows live in.

Rows are written whole (``rows_csv``) and read strictly (``read_rows_csv``): a torn or malformed row
is refused with its file and line, never read as a shorter one. No torch and no pandas at import
(pandas is imported inside ``load``), so reading the store stays light."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import RowError
from bench.store.provenance import now

if TYPE_CHECKING:  # pandas is imported inside ``load`` only; the config (torch) is a type only
    import pandas

    from bench.config import RunConfig


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
    row is never read as a shorter one. pandas is imported here, so importing the store stays light.
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
