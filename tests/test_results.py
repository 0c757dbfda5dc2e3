"""Results store: atomic writes, append-only rows, --force replaces a run's rows."""
from __future__ import annotations

import pytest

from bench import atomic
from bench.atomic import write_atomic
from bench.results import COLUMNS, ResultsStore


def _row(run_id, value):
    row = {column: "" for column in COLUMNS}
    row.update(run_id=run_id, method="acl", value=value)
    return row


def test_append_keeps_previous_rows_and_replace_run_drops_only_that_run(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row("a", 1), _row("b", 2)])
    store.append([_row("c", 3)])
    assert [r["run_id"] for r in store.read_rows()] == ["a", "b", "c"]
    store.append([_row("b", 5)], replace_run="b")
    assert [(r["run_id"], r["value"]) for r in store.read_rows()] == [("a", "1"), ("c", "3"), ("b", "5")]


def test_row_missing_columns_is_rejected_and_table_untouched(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row("a", 1)])
    before = store.table.read_text()
    with pytest.raises(ValueError, match="lacks columns"):
        store.append([{"run_id": "x"}])
    assert store.table.read_text() == before


def test_crash_during_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    write_atomic(target, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk died during rename")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]


def _append_many(root, prefix):
    store = ResultsStore(root)
    for index in range(15):
        store.append([_row(f"{prefix}{index}", index)])


def test_concurrent_appends_from_two_processes_keep_every_row(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(tmp_path, prefix)) for prefix in ("p", "q")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    run_ids = sorted(row["run_id"] for row in ResultsStore(tmp_path).read_rows())
    assert run_ids == sorted(f"{prefix}{index}" for prefix in ("p", "q") for index in range(15))
