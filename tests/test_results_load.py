"""``bench.store.rows.load``: the store as a typed DataFrame, every row checked like ``ResultRow``."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from bench.store.results import ResultsStore
from bench.store.rows import COLUMNS, Measurement, ResultRow, RowContext, RowError, load


def _context(run_id: str, seed: int | None = 0) -> RowContext:
    return RowContext(
        run_id=run_id,
        timestamp="2025-01-01T00:00:00+00:00",
        preset="smoke",
        method="acl",
        dataset="digits",
        eval_dataset="digits",
        seed=seed,
        pretrain_epochs=3,
        finetune_epochs=None,
        config_hash="h",
        code_version="v",
        torch_version="t",
        device="cpu",
    )


def _store(tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path)
    store.record(
        "a",
        [
            ResultRow.of(
                _context("a"),
                Measurement("SLF", "clean", "accuracy", 78.123456, 0.06, 64, 12.345, ("suspect:order", "suspect:eps0")),
            )
        ],
        {},
    )
    store.record(
        "b", [ResultRow.of(_context("b", seed=None), Measurement("ALF", "pgd20", "accuracy", 40.5, None, None))], {}
    )
    return store


def test_load_types_every_column_and_keeps_one_row_per_number(tmp_path):
    frame = load(_store(tmp_path).table)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 2
    assert {c: str(t) for c, t in frame.dtypes.items() if c in ("value", "epsilon", "wall_s")} == dict.fromkeys(
        ("value", "epsilon", "wall_s"), "float64"
    )
    assert all(str(frame[c].dtype) == "Int64" for c in ("n_eval", "seed", "pretrain_epochs", "finetune_epochs"))
    assert all(isinstance(frame[c].dtype, pd.StringDtype) for c in ("run_id", "method", "timestamp", "flags"))
    first, second = frame.iloc[0], frame.iloc[1]
    assert first.value == 78.1235 and first.wall_s == 12.35 and first.epsilon == 0.06  # as stored: 4 / 2 decimals
    assert first.n_eval == 64 and first.seed == 0 and first.pretrain_epochs == 3
    assert first["flags"] == "suspect:order;suspect:eps0" and second["flags"] == ""
    assert pd.isna(first.finetune_epochs) and pd.isna(second.seed) and pd.isna(second.n_eval)
    assert pd.isna(second.epsilon) and pd.isna(second.wall_s)
    assert frame["flags"].str.contains("suspect").tolist() == [True, False]


def test_load_of_a_store_written_before_the_protocol_column_reads_it_as_unified(tmp_path):
    """Stores written before finetuning protocols existed (header without ``protocol``) stay readable."""
    header, *lines = _store(tmp_path).table.read_text().splitlines()
    assert header.split(",")[-1] == "protocol" and all(line.endswith(",unified") for line in lines)
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("\n".join(text.rsplit(",", 1)[0] for text in [header, *lines]) + "\n")
    frame = load(legacy)
    assert list(frame.columns) == list(COLUMNS) and frame["protocol"].tolist() == ["unified", "unified"]
    assert isinstance(frame["protocol"].dtype, pd.StringDtype) and frame["value"].tolist() == [78.1235, 40.5]


def test_load_of_an_empty_store_keeps_the_columns_and_types(tmp_path):
    store = ResultsStore(tmp_path)
    store.collect()  # no run yet: the index is its header
    frame = load(store.table)
    assert frame.empty and list(frame.columns) == list(COLUMNS) and str(frame.seed.dtype) == "Int64"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda line: line.rsplit(",", 3)[0], r":3: 19 fields: allowed exactly 22 \(a torn row\?\)"),
        (lambda line: line + ",extra", r":3: 23 fields: allowed exactly 22"),
        (lambda line: line.replace(",40.5,", ",40.5x,"), r":3: value='40.5x' is invalid: allowed float values"),
    ],
)
def test_a_damaged_row_names_file_and_line(tmp_path, damage, message):
    store = _store(tmp_path)
    header, first, second = store.table.read_text().splitlines()
    store.table.write_text("\n".join([header, first, damage(second)]) + "\n")
    with pytest.raises(RowError, match=message) as error:
        load(store.table)
    assert str(store.table) in str(error.value)


def test_a_last_row_without_its_line_end_is_torn_not_shorter(tmp_path):
    """A write cut inside the last column still has every field: only the missing line end shows it."""
    store = _store(tmp_path)
    text = store.table.read_text()
    store.table.write_text(text[: text.rindex(",") + 1])  # the second row, cut before its (empty) flags
    with pytest.raises(
        RowError, match=r"results\.csv:3: the last row has no line end \(a write cut inside its last column\)"
    ):
        load(store.table)


def test_load_refuses_a_table_of_another_schema(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,value\nacl,1\n")
    with pytest.raises(RowError, match=r"results\.csv:1: header is \['method', 'value'\]: allowed exactly the columns"):
        load(path)
    with pytest.raises(FileNotFoundError, match="no results at .*: run `bench run` first"):
        load(tmp_path / "missing.csv")


def test_importing_the_store_loads_neither_pandas_nor_torch():
    code = "import sys, bench.store.results; print(sorted({'pandas', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
