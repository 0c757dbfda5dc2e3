"""Results store: per-run rows, an index rebuilt from complete runs, strict reading, atomic writes."""

from __future__ import annotations

import multiprocessing

import pytest

from bench.store import atomic
from bench.store.atomic import write_atomic
from bench.store.results import ResultsStore, StoreError
from bench.store.rows import COLUMNS, Measurement, ResultRow, RowContext, RowError, rows_csv


def _row(run_id, value, scheme="SLF"):
    context = RowContext(
        run_id=run_id,
        timestamp="2025-01-01T00:00:00+00:00",
        preset="smoke",
        method="acl",
        dataset="digits",
        eval_dataset="digits",
        seed=0,
        pretrain_epochs=1,
        finetune_epochs=None,
        config_hash="h",
        code_version="v",
        torch_version="t",
        device="cpu",
    )
    return ResultRow.of(context, Measurement(scheme, "clean", "accuracy", value, 0.06, 64, flags=("suspect:order",)))


def test_index_holds_the_rows_of_complete_runs_only_and_a_rerun_replaces_its_rows(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("b", [_row("b", 2.0)], {})
    store.record("a", [_row("a", 1.0), _row("a", 1.5, "ALF")], {})
    store.run("c").write_rows([_row("c", 3.0)])  # rows written, then killed before its completion mark
    assert [(r.run_id, r.value) for r in store.read_rows()] == [("a", 1.0), ("a", 1.5), ("b", 2.0)]
    store.record("b", [_row("b", 5.0)], {})  # --force rerun
    assert [(r.run_id, r.value) for r in store.read_rows()] == [("a", 1.0), ("a", 1.5), ("b", 5.0)]


def test_collect_twice_writes_the_same_bytes_and_rebuilds_a_damaged_index(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", [_row("a", 1.0)], {})
    store.record("b", [_row("b", 2.0)], {})
    first = store.table.read_bytes()
    assert store.collect() == 2 and store.table.read_bytes() == first
    store.table.write_text(first.decode()[:-20])  # torn index
    with pytest.raises(RowError, match="results.csv:3"):
        store.read_rows()
    store.collect()
    assert store.table.read_bytes() == first


def test_unreadable_completion_mark_means_incomplete(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", [_row("a", 1.0)], {})
    store.run("a").done.write_text("{not json")
    assert not store.run("a").is_complete()
    assert store.collect() == 0


def test_rows_round_trip_through_the_csv_with_their_types(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", [_row("a", 78.123456)], {})
    header, line = store.table.read_text().splitlines()
    assert tuple(header.split(",")) == COLUMNS
    assert line.split(",")[COLUMNS.index("value")] == "78.1235"  # stored to 4 decimals
    (back,) = store.read_rows()
    assert back.value == 78.1235 and back.finetune_epochs is None and back.flags == ("suspect:order",)
    assert back.epsilon == 0.06 and back.n_eval == 64 and back.seed == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text.replace(",1.0,", ",one,", 1), r"results.csv:2: value='one' is invalid"),
        (lambda text: text[: text.index(",accuracy,") + len(",accuracy,2")], r"results.csv:2: 10 fields"),
        (lambda text: text.replace(",1.0,", ",,", 1), r"results.csv:2: value='' is invalid"),
        (lambda text: text.replace(",1.0,", ",nan,", 1), r"allowed finite numbers"),
        (lambda text: "", r"results.csv:1: header is None"),
        (lambda text: "run_id,value\n", r"results.csv:1: header is"),
    ],
)
def test_damaged_index_is_refused_with_file_and_line(tmp_path, damage, message):
    store = ResultsStore(tmp_path)
    store.table.parent.mkdir(parents=True, exist_ok=True)
    store.table.write_text(damage(rows_csv([_row("a", 1.0), _row("b", 2.0)])))
    with pytest.raises(RowError, match=message):
        store.read_rows()


def test_binary_garbage_is_refused(tmp_path):
    store = ResultsStore(tmp_path)
    store.root.mkdir(parents=True, exist_ok=True)
    store.table.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RowError, match="not UTF-8"):
        store.read_rows()


def test_legacy_runs_take_their_rows_from_a_valid_index_and_refuse_a_damaged_one(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", [_row("a", 1.0)], {})
    store.record("b", [_row("b", 2.0)], {})
    store.run("a").rows.unlink()  # a run completed by an older version: done.json, no rows.csv
    assert store.collect() == 2 and [r.run_id for r in store.run("a").read_rows()] == ["a"]
    store.run("a").rows.unlink()
    store.table.write_text("run_id\n")
    before = store.table.read_text()
    with pytest.raises(StoreError, match="have no rows.csv"):
        store.collect()
    assert store.table.read_text() == before  # never rewritten after failing validation


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


def _record_many(root, prefix):
    store = ResultsStore(root)
    for index in range(15):
        store.record(f"{prefix}{index}", [_row(f"{prefix}{index}", float(index))], {})


def _collect_many(root):
    for _ in range(20):
        ResultsStore(root).collect()


@pytest.mark.e2e
def test_concurrent_writers_and_collects_never_tear_the_index(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(tmp_path, prefix)) for prefix in ("p", "q")]
    workers += [context.Process(target=_collect_many, args=(tmp_path,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert all(worker.exitcode == 0 for worker in workers)
    run_ids = sorted(row.run_id for row in ResultsStore(tmp_path).read_rows())
    assert run_ids == sorted(f"{prefix}{index}" for prefix in ("p", "q") for index in range(15))
