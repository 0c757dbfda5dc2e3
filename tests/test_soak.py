"""scripts/soak.py: its store checks find what they look for, damaged indexes are rebuilt, and
(opt-in, minutes of CPU) one killed attempt ends in the uninterrupted run's rows.

The end-to-end soak does not fit a CI test: on the shared 2-core machine the fast plan's reference
run alone took 58 s (``python scripts/soak.py --fast --iterations 2``: 210 s). Set
``ACL_BENCH_SOAK=1`` to run it here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch
from report_stores import row

from bench.store.results import ResultsStore, RunDir
from bench.store.rows import ResultRow, RowError

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_script"] = module
    spec.loader.exec_module(module)
    return module


def _complete_run(store: Path, run_id: str = "acl-s0") -> RunDir:
    """A run directory as a finished run leaves it: checkpoint, encoder, rows, completion mark."""
    run = RunDir(store / "runs" / run_id).create()
    torch.save({"model": {"w": torch.arange(6.0)}, "step": 4}, run.checkpoint)
    torch.save({"model": {"w": torch.ones(3)}, "arch": "small_cnn"}, run.encoder)
    stored = [
        ResultRow.from_csv({key: str(value) for key, value in row(run_id, "acl", "SLF", attack, value).items()})
        for attack, value in (("clean", 90.0), ("pgd20", 40.0))
    ]
    ResultsStore(store).record(run_id, stored, {"finished": True})
    return run


def test_a_sound_store_has_no_problems(soak, tmp_path):
    _complete_run(tmp_path)
    assert soak.check_store(tmp_path) == []


@pytest.mark.parametrize(
    "target, damage", [("checkpoint", "truncate"), ("encoder", "empty"), ("done", "garbage"), ("rows", "torn")]
)
def test_check_store_finds_every_torn_file(soak, tmp_path, target, damage):
    run = _complete_run(tmp_path)
    path = getattr(run, target)
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"{not json", "torn": data[:-6]}[damage]
    path.write_bytes(damaged)
    problems = soak.check_store(tmp_path)
    assert problems and all(str(run.path) in problem for problem in problems), problems
    if target == "done":
        assert not run.is_complete()  # an unreadable mark is an incomplete run, not a result


def test_a_complete_run_without_rows_is_a_problem(soak, tmp_path):
    run = _complete_run(tmp_path)
    run.rows.unlink()
    assert soak.check_store(tmp_path) == [f"{run.path}: complete, but rows.csv is missing"]


@pytest.mark.parametrize("kind", ["torn last row", "zero bytes", "random bytes"])
def test_each_damage_of_the_index_is_refused_then_rebuilt_from_the_runs(soak, tmp_path, kind):
    _complete_run(tmp_path, "acl-s0")
    _complete_run(tmp_path, "rocl-s0")
    store = ResultsStore(tmp_path)
    before = store.table.read_bytes()
    assert soak.damage_index(tmp_path, kind, random.Random(0))
    assert store.table.read_bytes() != before
    with pytest.raises(RowError):  # never read as fewer or shorter rows
        store.read_rows()
    assert store.collect() == 4 and store.table.read_bytes() == before


def test_comparable_rows_ignore_only_timestamp_wall_time_and_code_version(soak, tmp_path):
    _complete_run(tmp_path / "a")
    _complete_run(tmp_path / "b")
    text = (tmp_path / "b" / "runs" / "acl-s0" / "rows.csv").read_text()
    (tmp_path / "b" / "runs" / "acl-s0" / "rows.csv").write_text(text.replace("2025-01-01T00:00:00+00:00", "2026"))
    ResultsStore(tmp_path / "b").collect()
    assert soak.comparable_rows(tmp_path / "a") == soak.comparable_rows(tmp_path / "b")
    (tmp_path / "b" / "runs" / "acl-s0" / "rows.csv").write_text(text.replace(",90.0,", ",90.5,"))
    ResultsStore(tmp_path / "b").collect()
    assert soak.comparable_rows(tmp_path / "a") != soak.comparable_rows(tmp_path / "b")


@pytest.mark.skipif(os.environ.get("ACL_BENCH_SOAK") != "1", reason="minutes of CPU: set ACL_BENCH_SOAK=1")
def test_one_killed_attempt_ends_in_the_uninterrupted_rows(soak, tmp_path):
    verdict = soak.soak(tmp_path, iterations=1, fast=True, damage=True, seed=3, log=lambda _: None)
    assert verdict["ok"], json.dumps(verdict)


# --------------------------------------------------------------------------- the launchers' soak (--path)


@pytest.fixture(scope="module")
def paths(soak):
    sys.path.insert(0, str(SCRIPT.parent))  # soak_paths imports its sibling soak.py
    spec = importlib.util.spec_from_file_location("soak_paths", SCRIPT.parent / "soak_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_collect_source_is_refused_for_its_link_and_its_copy_is_no_run(paths, tmp_path):
    """The merge source the collect soak kills copies of: six complete runs, one holding a link out
    of the store (refused by ``collect --from``), a backup copy that is not a run."""
    (tmp_path / "secret.txt").write_text(paths.SECRET)
    source = ResultsStore(paths.collect_source(tmp_path, runs=3, megabytes=1))
    assert [run.run_id for run in source.run_dirs()] == [f"simclr-soak-s{index}" for index in range(3)]
    assert (source.runs / "simclr-soak-s0.bak").is_dir() and (source.runs / "simclr-soak-s0" / "notes.txt").is_symlink()


def test_the_launchers_soak_finds_links_copied_in_stray_staging_and_outside_files(paths, tmp_path):
    """Each check of a finished store can fail: a link, a file from outside, a stray ``.incoming``,
    a copied run's changed value; an identical store has no problem."""
    (tmp_path / "secret.txt").write_text(paths.SECRET)
    reference, store = tmp_path / "reference", tmp_path / "store"
    for root in (reference, store):
        _complete_run(root)
    assert paths.store_problems("collect", store, reference) == []
    run = ResultsStore(store).run("acl-s0")
    assert paths.plant(store, "backup copy", tmp_path).startswith("backup copy")
    ResultsStore(store).collect()
    assert paths.store_problems("sweep", store, reference) == []  # the copy is not a run: never indexed
    paths.plant(store, "link out of the store", tmp_path)
    (store / "runs" / ".acl-s0.host.1.incoming").mkdir()
    (run.path / "copied.txt").write_text(paths.SECRET)
    problems = paths.store_problems("collect", store, reference)
    assert any("a link copied in" in problem for problem in problems)
    assert any("stray staging folder" in problem for problem in problems)
    assert any("copied.txt: a file from outside" in problem for problem in problems)
