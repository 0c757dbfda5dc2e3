"""Probes of the second reliability review about the store and the CLI (``../shared/reviews/reliability-2.md``:
D3, D4, D6, D13, D15, D16, D14's float bound, argparse errors), one test each.

Each replays the review's repro at the smallest size that still shows the defect: stores built by hand
from rows and completion marks (no training), commands that fail before any work. The two that need a
real plan (a parallel run; a second process writing) are marked e2e.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from report_stores import row
from test_export import RUN_ID, stored  # noqa: F401  (the fixture: a store holding one SLF classifier)
from tiny_run import TINY

from bench.cli.app import main
from bench.runs.collect import merge_stores
from bench.store.results import ResultsStore, RunLocked, StoreError
from bench.store.rows import ResultRow

A, B = "acl-smoke-digits-s0-aaaa", "simclr-smoke-digits-s0-bbbb"


def _rows(run_id: str, value: float = 40.0, flags: str = "") -> list[ResultRow]:
    made = [row(run_id, "acl", "SLF", attack, value + i, flags=flags) for i, attack in enumerate(("clean", "pgd20"))]
    return [ResultRow.from_csv({key: str(v) for key, v in fields.items()}) for fields in made]


def _complete(root: Path, run_id: str, value: float = 40.0, flags: str = "") -> ResultsStore:
    """A store holding one more complete run: its config (one scheme), the scheme's rows, rows.csv, done.json."""
    store = ResultsStore(root)
    run = store.run(run_id).create()
    run.write_json(run.config, {"run_id": run_id, "method": "acl", "finetune": {"schemes": ["SLF"]}})
    run.write_scheme_rows("SLF", _rows(run_id, value, flags))
    store.record(run_id, _rows(run_id, value, flags), {"finished": True})
    return store


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _plan(args: list[str]):
    """The plan `bench run` resolves from these flags (nothing is run)."""
    from bench.cli.app import build_parser
    from bench.cli.commands import build_request, selected_methods
    from bench.runs.plan import build_plan

    parsed = build_parser().parse_args(["run", *args])
    return build_plan(build_request(parsed, selected_methods(parsed)))


# ------------------------------------------------------------------ D3: one torn rows.csv
def test_a_torn_rows_csv_is_quarantined_with_one_line_not_a_wedged_store(tmp_path, capsys):
    """D3: every collect raised on one run's torn rows.csv, so no later run reached the index and
    `run --force` stopped before redoing it. Now that run is left out with one warning line and marked
    failed (not complete), so the next `bench run` redoes it; the other runs are indexed."""
    store = _complete(tmp_path / "r", A)
    _complete(store.root, B, 70.0)
    torn = store.run(A).rows
    torn.write_bytes(torn.read_bytes()[:-30])
    capsys.readouterr()
    assert main(["collect", "--results-dir", str(store.root)]) == 0
    warning = _one_line(capsys.readouterr().err.replace(f"{store.table}: 2 rows from 1 complete runs\n", ""))
    assert warning.startswith("bench: warning: run " + A) and "rows.csv" in warning
    assert {r.run_id for r in store.read_rows()} == {B}
    assert not store.run(A).is_complete() and "quarantined" in store.run(A).failure()
    assert not store.verified_complete(store.run(A))
    assert main(["collect", "--results-dir", str(store.root)]) == 0  # nothing left to warn about
    assert "warning" not in capsys.readouterr().err


def test_a_complete_run_with_torn_rows_is_not_skipped_by_the_next_run(tmp_path):
    """The check `bench run` makes before skipping a complete run (``verified_complete``) quarantines one
    whose rows do not validate, so it is redone without --force."""
    store = _complete(tmp_path / "r", A)
    store.run(A).rows.write_text("run_id,value\n" + A + ",4")
    assert not store.verified_complete(store.run(A))
    assert store.run(A).failure().startswith("quarantined: its rows.csv does not validate")
    assert store.verified_complete(_complete(tmp_path / "r", B).run(B))


def test_collect_from_refuses_a_run_whose_rows_do_not_validate(tmp_path, capsys):
    """D3: `collect --from` copied a torn rows.csv unchecked, and the target was wedged."""
    source = _complete(tmp_path / "src", A)
    _complete(source.root, B, 70.0)
    torn = source.run(A).rows
    torn.write_bytes(torn.read_bytes()[:-30])
    capsys.readouterr()
    assert main(["collect", "--results-dir", str(tmp_path / "t"), "--from", str(source.root)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert A in line and "do not validate" in line
    target = ResultsStore(tmp_path / "t")
    assert [run.run_id for run in target.run_dirs()] == [B] and {r.run_id for r in target.read_rows()} == {B}


@pytest.mark.e2e
def test_a_parallel_run_redoes_the_torn_run_and_a_failed_collect_kills_no_sibling(tmp_path, capfd, monkeypatch):
    """D3 under --jobs 2: the parent's collect raised (a torn rows.csv of a third run) and terminated the
    running sibling, traceback, exit 1. Here acl is complete with a torn rows.csv and the parent's first
    collect fails (a full disk, say): acl is quarantined and redone, simclr finishes, exit 0."""
    args = ["--results-dir", str(tmp_path / "r"), *TINY, "--no-report"]
    ids = {run.method: run.run_id for run in _plan(["--methods", "simclr", "acl", *args]).runs}
    store = _complete(tmp_path / "r", ids["acl"])
    torn = store.run(ids["acl"]).rows
    torn.write_bytes(torn.read_bytes()[:-30])
    real, calls = ResultsStore.collect, []

    def fails_once(self):
        calls.append(self)
        if len(calls) == 1:
            raise StoreError("no space left (the test's)")
        return real(self)

    monkeypatch.setattr(ResultsStore, "collect", fails_once)
    capfd.readouterr()
    assert main(["run", "--methods", "simclr", "acl", "--jobs", "2", *args]) == 0
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line and ids["acl"] in line], err
    assert len(calls) >= 2 and "Traceback" not in err
    assert {r.method for r in store.read_rows()} == {"simclr", "acl"}
    assert all(store.run(run_id).is_complete() for run_id in ids.values())


# ------------------------------------------------------------------ D4: stores from before rows.csv
def test_merging_a_store_from_before_rows_csv_rebuilds_its_rows(tmp_path, capsys):
    """D4: `collect --from` a store whose runs have no rows.csv reported them copied, and the target
    indexed them with 0 rows ("complete", never re-merged). Their rows are rebuilt from their own scheme
    files, else taken from their store's index; a run whose rows are nowhere is refused in one line."""
    old = _complete(tmp_path / "old", A)  # scheme files: rebuilt from them
    _complete(old.root, B, 70.0)
    _complete(old.root, "c-run", 10.0)
    for run in old.run_dirs():
        run.rows.unlink()
    old.run(B).scheme_rows("SLF").unlink()  # B: only in the old index
    old.table.write_text(old.table.read_text().replace("c-run", "other"))  # c-run: nowhere
    old.run("c-run").scheme_rows("SLF").unlink()
    capsys.readouterr()
    assert main(["collect", "--results-dir", str(tmp_path / "new"), "--from", str(old.root)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "c-run" in line and "no rows.csv" in line
    new = ResultsStore(tmp_path / "new")
    assert sorted(run.run_id for run in new.run_dirs()) == [A, B]
    assert sorted((r.run_id, r.value) for r in new.read_rows()) == [(A, 40.0), (A, 41.0), (B, 70.0), (B, 71.0)]
    assert all(run.rows.exists() for run in new.run_dirs())


def test_a_legacy_run_whose_rows_are_nowhere_is_not_complete_with_zero_rows(tmp_path, capsys):
    """D4, the store's own runs: a complete run without rows.csv, scheme files or index rows was given an
    empty rows.csv. It is quarantined instead; one with its scheme files keeps their rows."""
    store = _complete(tmp_path / "r", A)
    _complete(store.root, B, 70.0)
    for run_id in (A, B):
        store.run(run_id).rows.unlink()
    store.run(B).scheme_rows("SLF").unlink()
    store.table.write_text(store.table.read_text().split("\n", 1)[0] + "\n")
    capsys.readouterr()
    assert store.collect() == 2
    assert B in _one_line(capsys.readouterr().err) and not store.run(B).is_complete()
    assert [r.run_id for r in store.run(A).read_rows()] == [A, A]


# ------------------------------------------------------------------ D6: one writer per run
def test_collect_from_into_a_run_being_written_is_refused(tmp_path, capsys):
    """D6: `collect --from` replaced a run directory while `bench run` wrote it (the SLF classifier was
    then not the stored encoder's, exit 0). A writer holds the run's lock; the merge refuses that run."""
    _complete(tmp_path / "src", A)
    target = ResultsStore(tmp_path / "t")
    target.run(A).create()  # incomplete here: the merge would copy it
    with target.run(A).lock(("", "SLF")):
        assert main(["collect", "--results-dir", str(target.root), "--from", str(tmp_path / "src")]) == 1
    line = _one_line(capsys.readouterr().err)
    assert A in line and "being written by another process" in line
    assert not target.run(A).is_complete()
    assert main(["collect", "--results-dir", str(target.root), "--from", str(tmp_path / "src")]) == 0
    assert target.run(A).is_complete()


def test_run_locks_exclude_whole_run_writers_and_let_schemes_run_in_parallel(tmp_path):
    """The lock's rule, with two threads: a whole-run writer excludes every other writer of the run; two
    finetune jobs of different schemes run together; a waiting writer goes on once the lock is free."""
    run = ResultsStore(tmp_path / "r").run(A)
    with run.lock(("SLF",)):
        with run.lock(("ALF",), wait=False):  # another scheme's job: in parallel
            pass
        with pytest.raises(RunLocked, match="being written by another process"):
            with run.lock(("", "SLF", "ALF"), wait=False):
                pass
    entered = threading.Event()

    def finetune_job():
        with run.lock(("SLF",)):
            entered.set()

    with run.lock(("", "SLF")):
        waiter = threading.Thread(target=finetune_job)
        waiter.start()
        assert not entered.wait(0.5)  # waits while the whole run is held
    assert entered.wait(10)
    waiter.join()


@pytest.mark.e2e
def test_a_second_bench_run_of_a_run_being_written_waits_then_skips_it(tmp_path, capsys):
    """D6: two `bench run` of one run interleaved (1 of 3 trials). The second writer (a thread here, the
    test holding the first writer's lock) waits for the run's lock, saying so in one line, and then finds
    the run complete: nothing is written twice."""
    import time

    from bench.runs.pipeline import run_plan

    plan = _plan(["--methods", "simclr", "--results-dir", str(tmp_path / "r"), *TINY, "--jobs", "1"])
    (run_id,) = [run.run_id for run in plan.runs]
    store = _complete(tmp_path / "r", run_id)
    done = store.run(run_id).done.read_bytes()
    outcomes = []
    second = threading.Thread(target=lambda: outcomes.extend(run_plan(plan)))
    with store.run(run_id).lock():
        second.start()
        said = ""
        for _ in range(200):
            said += capsys.readouterr().err
            if "waiting" in said:
                break
            time.sleep(0.1)
        assert f"waiting for another process writing run {run_id}" in said and second.is_alive()
    second.join(60)
    assert [outcome.status for outcome in outcomes] == ["skipped"]
    assert store.run(run_id).done.read_bytes() == done and store.verified_complete(store.run(run_id))


# ------------------------------------------------------------------ D13: flags in merge conflicts
def test_merge_conflicts_compare_flags(tmp_path):
    """D13: two stores whose rows differed only in `flags` merged as "already here"."""
    target = _complete(tmp_path / "t", A)
    _complete(tmp_path / "src", A, flags="suspect:degenerate")
    with pytest.raises(StoreError, match=f"1 conflicting run.*{A}: different rows"):
        merge_stores(target, [tmp_path / "src"])
    _complete(tmp_path / "same", A)
    assert merge_stores(target, [tmp_path / "same"]).identical == [A]


# ------------------------------------------------------------------ D15: exit codes, hints, paths
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["collect", "--from", "{tmp}/missing"], "--from '{tmp}/missing' is invalid: it does not exist"),
        (["status", "--results-dir", "{tmp}/typo"], "no results store at {tmp}/typo"),
        (["sweep", "--methods", "acl", "--jobs-dir", "{tmp}/afile"], "--jobs-dir='{tmp}/afile' is invalid"),
    ],
    ids=["collect-from-missing", "status-typo", "jobs-dir-file"],
)
def test_bad_paths_exit_2_in_one_line(tmp_path, capsys, argv, expected):
    """D15: `--jobs-dir FILE` and `collect --from missing` exited 1; `status --results-dir typo` printed
    nothing, exit 0."""
    (tmp_path / "afile").write_text("x")
    argv = [part.format(tmp=tmp_path) for part in argv]
    if argv[0] != "status":
        argv += ["--results-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert expected.format(tmp=tmp_path) in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("raised", ["interrupt", "disk full"])
def test_sweep_lines_advise_what_sweep_accepts(tmp_path, capsys, monkeypatch, raised):
    """D15: a sweep's interrupt and disk-full lines said "rerun with --resume", which sweep rejects
    (it resumes by itself); `bench run` keeps its advice."""
    from bench.cli import commands
    from bench.store.atomic import DiskFullError

    def stop(request):
        raise KeyboardInterrupt if raised == "interrupt" else DiskFullError(tmp_path / "results.csv")

    monkeypatch.setattr(commands, "build_plan", stop)
    for command, advice in (("sweep", "rerun the same"), ("run", "rerun with --resume")):
        assert main([command, "--methods", "acl", "--results-dir", str(tmp_path / "r")]) in (1, 130)
        line = _one_line(capsys.readouterr().err)
        assert advice in line and (command == "run" or "--resume" not in line), line
    with pytest.raises(SystemExit):  # and sweep does reject the flag it is no longer told to pass
        main(["sweep", "--methods", "acl", "--resume"])


def test_sweep_failure_lines_do_not_advise_resume(capsys):
    from bench.cli.commands import SWEEP_RESUMES, _summarise
    from bench.runs.pipeline import RunOutcome

    reason = "DiskFullError: no space left on the device while writing x (free some space, then rerun with --resume)"
    assert _summarise([RunOutcome(A, "acl", "failed", reason)], SWEEP_RESUMES) == 1
    line = [line for line in capsys.readouterr().err.splitlines() if A in line][0]
    assert "--resume" not in line and "rerun the same bench sweep" in line


@pytest.mark.e2e
def test_export_of_a_run_given_as_a_path_writes_inside_out(stored, tmp_path, monkeypatch):  # noqa: F811
    """D15: `bench export ../../x/runs/$ID --out d` wrote `d/../../x/runs/$ID-SLF.pt`, outside `d`."""
    results, _ = stored
    work = tmp_path / "w"
    (work / "results" / "runs").mkdir(parents=True)
    (work / "d").mkdir()
    shutil.move(results, tmp_path / "x")
    monkeypatch.chdir(work)
    given = f"../../../x/runs/{RUN_ID}"
    assert main(["export", given, "--scheme", "SLF", "--out", "d", "--format", "robustbench"]) == 0
    assert sorted(path.name for path in (work / "d").iterdir()) == [f"{RUN_ID}-SLF.pt", f"{RUN_ID}-SLF.pt.json"]
    assert sorted(path.name for path in (tmp_path / "x" / "runs").iterdir()) == [RUN_ID]


# ------------------------------------------------------------------ D16: a derived index cut short
@pytest.mark.parametrize("damage", ["header only", "cut at a row boundary"])
def test_an_index_that_does_not_match_its_runs_is_detected_and_rebuilt(tmp_path, capsys, damage):
    """D16 at the store: a valid index that lacks rows is told apart from the one the runs give."""
    from bench.runs.collect import refresh_index

    store = _complete(tmp_path / "r", A)
    _complete(store.root, B, 70.0)
    whole = store.table.read_bytes()
    assert store.index_is_current()
    lines = whole.splitlines(keepends=True)
    store.table.write_bytes(lines[0] if damage == "header only" else b"".join(lines[:-1]))
    assert not store.index_is_current()
    refresh_index(store.root)
    assert store.table.read_bytes() == whole and "did not match" in _one_line(capsys.readouterr().err)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["header only", "cut at a row boundary"])
def test_report_rebuilds_an_index_that_does_not_match_its_runs(tmp_path, capsys, damage):
    """D16: `report` on a results.csv left with its header, or cut at a row boundary (valid CSV), wrote
    partial tables, exit 0. The index is derived: it is rebuilt from the run directories first, with one
    warning line, and the tables show every run."""
    store = _complete(tmp_path / "r", A)
    _complete(store.root, B, 70.0)
    whole = store.table.read_text()
    lines = whole.splitlines(keepends=True)
    store.table.write_text(lines[0] if damage == "header only" else "".join(lines[:-1]))
    assert not store.index_is_current()
    capsys.readouterr()
    assert main(["report", "--results-dir", str(store.root), "--reports-dir", str(tmp_path / "rep"), "--quiet"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "did not match the run directories" in warning[0]
    assert store.table.read_text() == whole and store.index_is_current()
    assert "71.0" in (tmp_path / "rep" / "results.md").read_text()


# ------------------------------------------------------------------ D14: finite but unbounded floats
def test_warmup_epochs_of_1e308_is_refused_before_any_write(tmp_path, capsys):
    """D14's rest: `--set pretrain.warmup_epochs=1e308` passed validation, wrote the run, then overflowed
    (exit 1). The field is bounded like the other ranges: exit 2, one line, nothing written."""
    argv = ["run", "--methods", "simclr", "--results-dir", str(tmp_path / "r"), "--set"]
    assert main([*argv, "pretrain.warmup_epochs=1e308"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "pretrain.warmup_epochs=1e+308 is invalid: allowed numbers in [0, 1000000]" in line, line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ argparse: one line, exit 2
@pytest.mark.parametrize(
    "argv, prog",
    [
        (["run", "--nosuch"], "bench run"),
        (["export", "some-run"], "bench export"),
        (["sweep", "--launcher", "nosuch"], "bench sweep"),
        (["sweep", "--timeout-min", "abc"], "bench sweep"),
        ([], "bench"),
        (["nosuch"], "bench"),
    ],
    ids=["unknown-flag", "missing-required", "bad-choice", "bad-type", "no-command", "unknown-command"],
)
def test_argparse_errors_are_one_line_exit_2(capsys, argv, prog):
    """argparse printed its whole usage (17 to 24 lines) before the message."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"{prog}: error: ") and line.endswith(f"(see {prog} --help)"), line


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["collect", "--help"])
    assert exited.value.code == 0 and "usage: bench collect" in capsys.readouterr().out


def test_json_of_the_status_is_unchanged_for_an_existing_store(tmp_path, capsys):
    store = _complete(tmp_path / "r", A)
    assert main(["status", "--results-dir", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": A, "state": "complete"}
