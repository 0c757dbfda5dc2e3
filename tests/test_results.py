"""Results store: atomic writes, append-only rows, --force replaces a run's rows."""
from __future__ import annotations

import pytest

from bench import atomic
from bench.atomic import write_atomic
from bench.results import COLUMNS, Measurement, ResultRow, ResultsStore, RowContext, RowError


def _row(run_id, value):
    context = RowContext(run_id=run_id, timestamp="2025-01-01T00:00:00+00:00", preset="smoke", method="acl",
                         dataset="digits", eval_dataset="digits", seed=0, pretrain_epochs=1, finetune_epochs=None,
                         config_hash="h", code_version="v", torch_version="t", device="cpu")
    return ResultRow.of(context, Measurement("SLF", "clean", "accuracy", value, 0.06, 64, flags=("suspect:order",)))


def test_append_keeps_previous_rows_and_replace_run_drops_only_that_run(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row("a", 1), _row("b", 2)])
    store.append([_row("c", 3)])
    assert [r.run_id for r in store.read_rows()] == ["a", "b", "c"]
    store.append([_row("b", 5)], replace_run="b")
    assert [(r.run_id, r.value) for r in store.read_rows()] == [("a", 1.0), ("c", 3.0), ("b", 5.0)]


def test_rows_round_trip_through_the_csv_with_their_types(tmp_path):
    store = ResultsStore(tmp_path)
    row = _row("a", 78.123456)
    store.append([row])
    header, line = store.table.read_text().splitlines()
    assert tuple(header.split(",")) == COLUMNS
    assert line.split(",")[COLUMNS.index("value")] == "78.1235"  # stored to 4 decimals
    (back,) = store.read_rows()
    assert back.value == 78.1235 and back.finetune_epochs is None and back.flags == ("suspect:order",)
    assert back.epsilon == 0.06 and back.n_eval == 64 and back.seed == 0


def test_row_that_is_not_a_result_row_is_rejected_and_table_untouched(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row("a", 1)])
    before = store.table.read_text()
    with pytest.raises(TypeError, match="must be ResultRow"):
        store.append([{"run_id": "x"}])
    assert store.table.read_text() == before


def test_unreadable_stored_row_names_file_and_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row("a", 1.0), _row("b", 2.0)])
    lines = store.table.read_text().splitlines()
    lines[2] = lines[2].replace(",2.0,", ",two,")
    store.table.write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"results.csv:3: value='two' is invalid"):
        store.read_rows()


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
    run_ids = sorted(row.run_id for row in ResultsStore(tmp_path).read_rows())
    assert run_ids == sorted(f"{prefix}{index}" for prefix in ("p", "q") for index in range(15))
