"""The minor items of the reliability review (issue 15, item 8): each a one-line error or a handled case.

Bad paths, a parameter the method never reads, a corrupt sanity file, a ``--curve-methods`` typo and a
full disk while writing the store.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from report_stores import row, write_sanity, write_store
from test_reliability import TINY

from bench.cli.app import main
from bench.engine import progress
from bench.products.report import write_reports
from bench.runs.plan import RunRequest, build_plan
from bench.store import atomic
from bench.store.atomic import DiskFullError, atomic_write, save_torch_atomic
from bench.store.results import ResultsStore


def _one_line_error(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected and len(err.splitlines()) == 1 and err.startswith("bench: error: "), err
    return err


def _run(root, *args):
    return main(["run", "--results-dir", str(root / "r"), "--reports-dir", str(root / "rep"), *TINY, *args])


STORED = ("--methods", "simclr", "--jobs", "1", "--no-report", "--set", "pretrain.checkpoint_every=2")


@pytest.fixture(scope="module")
def stored_run(shared_run):
    """One tiny complete simclr run, made once per session (``shared_run``): read by several tests, never changed."""
    root = shared_run(*TINY, *STORED)
    (run,) = ResultsStore(root / "r").run_dirs()
    return root, run


# ------------------------------------------------------------------ parameters the method never reads
@pytest.mark.parametrize(
    "param, text",
    [
        ("acl:adv_weight=0.5", "--param acl:adv_weight=0.5 is invalid: acl never reads 'adv_weight'"),
        ("acl:beta=2", "--param acl:beta=2 is invalid: acl never reads 'beta'"),
        ("adv_weight=0.5", "--param adv_weight=0.5 is invalid: no selected method reads 'adv_weight'"),
        ("deacl:temperature=0.2", "deacl never reads 'temperature'"),
    ],
)
def test_a_parameter_the_method_never_reads_is_refused(tmp_path, capsys, param, text):
    methods = "deacl" if param.startswith("deacl") else "acl"
    err = _one_line_error(capsys, _run(tmp_path, "--methods", methods, "--param", param))
    assert text in err and "allowed" in err
    assert not (tmp_path / "r").exists()


def test_an_unscoped_parameter_reaches_only_the_methods_that_read_it():
    plain = build_plan(RunRequest(preset="smoke", overrides={}, method_params={}, methods=("acl", "acl-ip")))
    given = build_plan(
        RunRequest(preset="smoke", overrides={}, method_params={"*": {"alpha": "0.3"}}, methods=("acl", "acl-ip"))
    )
    ids = {run.method: run.run_id for run in plain.runs}
    ids_given = {run.method: run.run_id for run in given.runs}
    assert ids_given["acl"] == ids["acl"]  # acl never reads alpha: same run, same id
    assert ids_given["acl-ip"] != ids["acl-ip"]
    assert {run.method: run.params.alpha for run in given.runs}["acl-ip"] == 0.3


# ------------------------------------------------------------------ paths of the wrong kind
def test_reports_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    results_csv = write_store(tmp_path, [row("acl-s0", "acl", "SLF", "clean", 90.0)])
    (tmp_path / "afile").write_text("x")
    code = main(
        ["report", "--results-dir", str(results_csv.parent), "--reports-dir", str(tmp_path / "afile"), "--quiet"]
    )
    err = _one_line_error(capsys, code)
    assert f"reports_dir='{tmp_path / 'afile'}' is invalid: allowed a directory" in err


@pytest.mark.parametrize("flag", ["--results-dir", "--reports-dir"])
def test_run_with_a_store_path_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, flag):
    (tmp_path / "afile").write_text("x")
    other = "--reports-dir" if flag == "--results-dir" else "--results-dir"
    code = main(["run", "--methods", "acl", flag, str(tmp_path / "afile"), other, str(tmp_path / "other"), "--quiet"])
    assert "is invalid: allowed a directory (this path is a file)" in _one_line_error(capsys, code)
    assert not (tmp_path / "other").exists()


def test_data_dir_that_is_a_file_with_download_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(
        [
            "run",
            "--methods",
            "acl",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "afile"),
            "--download",
            "--results-dir",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert f"data.data_dir='{tmp_path / 'afile'}' is invalid" in _one_line_error(capsys, code)
    assert not (tmp_path / "r").exists() and (tmp_path / "afile").read_text() == "x"


@pytest.mark.e2e
def test_export_into_a_directory_writes_the_run_file_there(stored_run, tmp_path, capsys):
    root, run = stored_run
    out = tmp_path / "exported"
    out.mkdir()
    assert main(["export", run.run_id, "--scheme", "SLF", "--out", str(out), "--results-dir", str(root / "r")]) == 0
    written = out / f"{run.run_id}-SLF.pt"
    assert capsys.readouterr().out.strip() == str(written)
    model = torch.jit.load(str(written), map_location="cpu")
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


# ------------------------------------------------------------------ report inputs
def test_curve_methods_typo_is_one_line_naming_the_stored_methods(tmp_path, capsys):
    results_csv = write_store(
        tmp_path, [row("acl-s0", "acl", "SLF", "clean", 90.0), row("rocl-s0", "rocl", "SLF", "clean", 80.0)]
    )
    code = main(
        [
            "report",
            "--results-dir",
            str(results_csv.parent),
            "--reports-dir",
            str(tmp_path / "rep"),
            "--curve-methods",
            "acl,nosuch",
            "--quiet",
        ]
    )
    err = _one_line_error(capsys, code)
    assert "--curve-methods 'nosuch' is invalid: allowed" in err and "['acl', 'rocl']" in err
    assert not (tmp_path / "rep").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage", b'{"order": ', b"[1, 2]"])
def test_a_corrupt_sanity_file_is_a_failed_check_not_a_silent_gap(tmp_path, capsys, monkeypatch, damage):
    monkeypatch.setattr(progress, "_quiet", False)  # an earlier --quiet command may have left it on
    results_csv = write_store(
        tmp_path, [row("acl-s0", "acl", "SLF", "clean", 90.0), row("acl-s0", "acl", "ALF", "clean", 80.0)]
    )
    runs = tmp_path / "results" / "runs"
    write_sanity(runs, "acl-s0", {"order": {"passed": True, "detail": "ok"}}, scheme="SLF")
    write_sanity(runs, "acl-s0", {}, scheme="ALF").write_bytes(damage)
    write_reports(results_csv, tmp_path / "rep", runs, None, figures=False)
    text = (tmp_path / "rep" / "sanity.md").read_text()
    assert "2 checks over 2 evaluations; 1 failed" in text
    assert f"| acl | ALF | file | **NO** | sanity file {runs / 'acl-s0' / 'sanity_ALF.json'} is unreadable" in text
    warning = [line for line in capsys.readouterr().err.splitlines() if "sanity_ALF.json" in line]
    assert len(warning) == 1 and "listed as a failed check" in warning[0]


# ------------------------------------------------------------------ full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("save", ["bytes", "torch"])
def test_a_full_disk_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch, save):
    target = tmp_path / "stored.bin"
    target.write_bytes(b"previous")
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {target}"):
        if save == "bytes":
            atomic_write(target, lambda stream: stream.write(b"new"))
        else:
            save_torch_atomic({"weights": torch.ones(3)}, target)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["stored.bin"]


def test_the_disk_full_error_survives_pickling(tmp_path):
    import pickle

    error = pickle.loads(pickle.dumps(DiskFullError(tmp_path / "results.csv")))
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error).startswith(f"no space left on the device while writing {tmp_path / 'results.csv'}")


@pytest.mark.e2e
def test_a_full_disk_mid_run_is_one_line_and_resume_gives_the_clean_rows(stored_run, tmp_path, capsys, monkeypatch):
    """ENOSPC on the 3rd stored write of a run (inside pretraining): exit 1 with one line; the run
    is resumable; after space is freed, --resume records the same rows as a run that never failed."""
    real_fsync, calls = os.fsync, []

    def full_once(handle):
        calls.append(handle)
        if len(calls) == 3:
            _enospc()
        return real_fsync(handle)

    monkeypatch.setattr(atomic.os, "fsync", full_once)
    code = _run(tmp_path, *STORED)
    err = capsys.readouterr().err
    assert code == 1 and "No space left" not in err and "no space left on the device while writing" in err
    (run,) = ResultsStore(tmp_path / "r").run_dirs()
    assert run.failure() and run.failure_is_resumable() and not run.is_complete()
    assert not [path for path in run.path.iterdir() if path.name.endswith(".tmp")]
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert _run(tmp_path, *STORED, "--resume") == 0
    reference_root, _ = stored_run
    measured = [(r.scheme, r.attack, r.metric, r.value) for r in ResultsStore(tmp_path / "r").read_rows()]
    clean = [(r.scheme, r.attack, r.metric, r.value) for r in ResultsStore(reference_root / "r").read_rows()]
    assert measured == clean and json.loads(run.done.read_text())


# ------------------------------------------------------------------ damaged files read by the report and by import
@pytest.mark.e2e
def test_a_binary_loss_history_costs_its_curve_not_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", False)
    results_csv = write_store(
        tmp_path, [row("acl-s0", "acl", "SLF", "clean", 90.0), row("rocl-s0", "rocl", "SLF", "clean", 80.0)]
    )
    history = tmp_path / "results" / "runs" / "acl-s0" / "pretrain_history.csv"
    history.write_bytes(b"\xff\xfe\xac\x00" * 50)
    written = write_reports(results_csv, tmp_path / "rep", tmp_path / "results" / "runs", None)
    assert any(path.name.startswith("loss") for path in map(Path, written))  # rocl's curve is still drawn
    warning = [line for line in capsys.readouterr().err.splitlines() if "pretrain_history.csv" in line]
    assert warning == [
        f"warning: {history}: not a loss history (UnicodeDecodeError); its run is left out of the loss figure"
    ]


@pytest.mark.parametrize("content", [b"hello\n", b""])
def test_a_checkpoint_that_is_no_torch_file_says_so(tmp_path, content):
    from bench.engine.checkpoints import CheckpointError, load_encoder

    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    expected = r"notes\.pt is not a torch\.save file \(neither a zip archive nor a pickle\)"
    with pytest.raises(CheckpointError, match=expected):
        load_encoder(path, "bench")
