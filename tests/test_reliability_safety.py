"""Probes of the second reliability review (``../shared/reviews/reliability-2.md``), one test each.

Each test replays the review's repro at the smallest size that still shows the defect: a stored
classifier built by hand (no training), stores made of a few files, configs validated without a run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import Tuple  # noqa: UP035 (TorchScript reads typing.Tuple)

import pytest
import torch
from test_export import RUN_ID, stored  # noqa: F401  (the fixture: a store holding one SLF classifier)

from bench.engine.checkpoints import CheckpointError
from bench.products.export import export_run, load_exported, sidecar_path


class _WritesAtLoad(torch.nn.Module):
    """The review's D1 module: its TorchScript ``__setstate__`` creates the file PWNED when loaded."""

    def __init__(self):
        super().__init__()
        self.b = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:  # noqa: UP006
        return (self.b, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:  # noqa: UP006
        t = torch.from_file("PWNED", True, 16, dtype=torch.uint8)
        t.fill_(67)
        self.b = state[0] + t.sum() * 0
        self.training = state[1]

    def forward(self, x):
        return x


@pytest.mark.parametrize("claimed", ["torchscript", "safetensors", "robustbench"])
def test_a_torchscript_file_never_runs_whatever_its_sidecar_says(tmp_path, monkeypatch, claimed):
    """D1: the sidecar alone picked ``torch.jit.load``; the file's own bytes decide now, and TorchScript
    loads only when the caller asks for it. The sidecar even carries the file's true sha256."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m.safetensors"
    torch.jit.script(_WritesAtLoad()).save(str(out))
    sidecar = {
        "format": "acl-bench-export",
        "weights_format": claimed,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }
    sidecar_path(out).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="TorchScript") as refused:
        load_exported(out)
    assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


def test_torchscript_loads_only_when_asked(stored, tmp_path):  # noqa: F811
    results, classifier = stored
    out = export_run(results, RUN_ID, "SLF", tmp_path / "model.pt", "torchscript")
    with pytest.raises(CheckpointError, match="allow_torchscript=True"):
        load_exported(out)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(load_exported(out, allow_torchscript=True)(images), classifier(images), atol=1e-6)


@pytest.mark.e2e
def test_weights_that_do_not_match_the_sidecar_hash_are_refused(stored, tmp_path):  # noqa: F811
    """D11: an export killed after its weights' rename, before its sidecar's, left another run's weights
    under the old sidecar (the review's ``cp b.pt a.pt``); they loaded silently."""
    results, classifier = stored
    a = export_run(results, RUN_ID, "SLF", tmp_path / "a.pt", "robustbench")
    checkpoint = torch.load(a, weights_only=True)
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {key: value + 1 if value.is_floating_point() else value for key, value in state.items()}
    b = tmp_path / "b.pt"
    torch.save(checkpoint, b)
    shutil.copyfile(b, a)
    with pytest.raises(CheckpointError, match=r"sha256 .* differs from its sidecar"):
        load_exported(a)


def test_a_torchscript_file_as_a_checkpoint_is_refused_before_loading(tmp_path, monkeypatch):
    """The same policy for every checkpoint the suite reads (``--checkpoint``, store files)."""
    from bench.engine.checkpoint_read import read_state

    monkeypatch.chdir(tmp_path)
    torch.jit.script(_WritesAtLoad()).save(str(tmp_path / "encoder.pt"))
    with pytest.raises(CheckpointError, match="is a TorchScript archive: loading it runs the code"):
        read_state(tmp_path / "encoder.pt")
    assert not (tmp_path / "PWNED").exists()


def _store_with_a_run(root, run_id=RUN_ID, value=40.0):
    """A store holding one complete run (rows and completion mark only: all that merging reads)."""
    from report_stores import row

    from bench.store.results import ResultsStore
    from bench.store.rows import ResultRow

    store = ResultsStore(root)
    store.run(run_id).create()
    rows = [ResultRow.from_csv({key: str(v) for key, v in row(run_id, "simclr", "SLF", "pgd20", value).items()})]
    store.record(run_id, rows, {"finished": True})
    return store


@pytest.mark.parametrize(
    "planted", ["link to a file outside", "link to /dev/zero", "rows.csv to /dev/zero", "fifo", "linked run directory"]
)
def test_collect_from_never_follows_symlinks_nor_reads_special_files(tmp_path, planted, capsys):
    """D8: ``collect --from`` copied through symlinks (a file from outside the source store came in; a link
    to /dev/zero filled the disk). A run holding a link or a special file is refused with one line, the
    store's other runs are copied, and nothing outside the source is read."""
    import os

    from bench.cli.app import main

    source = _store_with_a_run(tmp_path / "src")
    _store_with_a_run(tmp_path / "src", "acl-smoke-digits-s0-ok")
    secret = tmp_path / "secret.txt"
    secret.write_text("s\n")
    run = source.run(RUN_ID).path
    if planted == "link to a file outside":
        (run / "n.txt").symlink_to(os.path.relpath(secret, run))
    elif planted == "link to /dev/zero":
        (run / "zero.pt").symlink_to("/dev/zero")
    elif planted == "rows.csv to /dev/zero":  # read before any copy, to compare with the target's rows
        _store_with_a_run(tmp_path / "t", RUN_ID)  # the target has the run: rows are compared
        (run / "rows.csv").unlink()
        (run / "rows.csv").symlink_to("/dev/zero")
    elif planted == "fifo":
        os.mkfifo(run / "pipe")
    else:  # the run directory itself is a link to a directory outside the store
        outside = tmp_path / "outside"
        shutil.move(run, outside)
        run.symlink_to(outside, target_is_directory=True)
    target = tmp_path / "t"
    capsys.readouterr()
    assert main(["collect", "--results-dir", str(target), "--from", str(tmp_path / "src")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and RUN_ID in err[0] and ("symbolic link" in err[0] or "not a regular file" in err[0]), err
    assert (target / "runs" / RUN_ID).exists() == (planted == "rows.csv to /dev/zero")  # there: the target's own
    assert (target / "runs" / "acl-smoke-digits-s0-ok").is_dir()
    copied = [path for path in target.rglob("*") if not path.is_dir()]
    assert all(not path.is_symlink() and path.read_bytes() != b"s\n" for path in copied)
    assert not [path for path in (target / "runs").iterdir() if path.name.startswith(".")]  # no staging left


def test_status_lines_print_brackets_verbatim(tmp_path, capsys):
    """D2: status lines went through rich markup, so ``[/…]`` (a gloo error's file name, a path) raised
    MarkupError and ``[…]`` vanished. A recorded failure with one made every later run abort."""
    import types

    from bench.cli.app import main
    from bench.engine import progress
    from bench.runs.stages import prepare_run_dir
    from bench.store.results import ResultsStore

    reason = "RuntimeError: [/__w/gloo/pair.cc:545] reset [bold]x[/bold]"
    progress.log(reason)
    assert capsys.readouterr().err.strip() == reason
    run = ResultsStore(tmp_path / "r").run(RUN_ID).create()
    run.failed.write_text(json.dumps({"reason": reason, "resumable": False}))
    context = types.SimpleNamespace(force=False, resume=False)
    prepare_run_dir(run, context, "simclr")  # the line that logs the recorded failure
    assert reason in capsys.readouterr().err and not run.failed.exists()
    odd = tmp_path / "x[/y]"
    assert main(["collect", "--results-dir", str(odd)]) == 0
    assert f"{odd / 'results.csv'}: 0 rows" in capsys.readouterr().err


def test_only_real_runs_are_indexed_not_copies_nor_incoming_folders(tmp_path, capsys):
    """D5: every directory under runs/ was indexed: a backup copy (``cp -r runs/X runs/X.bak``, one value
    edited) doubled the rows and the report could show the copy's number, and so did the
    ``.X.<pid>.incoming`` a killed ``collect --from`` leaves. A run is a directory whose name is its
    recorded run id (config.json, rows.csv) and does not start with a dot."""
    from bench.cli.app import main
    from bench.store.results import ResultsStore

    store = _store_with_a_run(tmp_path / "r")
    run = store.run(RUN_ID)
    run.write_json(run.config, {"method": "simclr", "run_id": RUN_ID})
    backup = store.runs / f"{RUN_ID}.bak"
    shutil.copytree(run.path, backup)
    (backup / "rows.csv").write_text((backup / "rows.csv").read_text().replace(",40.0,", ",99.0,"))
    shutil.copytree(run.path, store.runs / f".{RUN_ID}.4242.incoming")
    renamed = store.runs / "renamed-run"  # rows recorded under another id, no config.json
    shutil.copytree(run.path, renamed)
    (renamed / "config.json").unlink()
    assert main(["collect", "--results-dir", str(store.root)]) == 0
    rows = ResultsStore(store.root).read_rows()
    assert [(row.run_id, row.value) for row in rows] == [(RUN_ID, 40.0)]
    assert [run.run_id for run in store.run_dirs()] == [RUN_ID]
    capsys.readouterr()
    assert main(["status", "--results-dir", str(store.root)]) == 0
    assert capsys.readouterr().out.split() == [RUN_ID, "complete"]


@pytest.mark.parametrize("field", ["seed", "evaluate.subset_seed", "evaluate.corruption_seed"])
def test_a_seed_beyond_what_the_generators_take_is_refused_in_one_line(field):
    """D14: ``--seed 9223372036854775807`` passed validation, wrote the run, then failed (exit 1) where
    the epoch order derives ``seed * 1_000_003 + epoch``. Seeds are bounded to [0, 2**32 - 1], what
    numpy's legacy ``seed`` takes, and every derived seed then fits torch's 64 bits."""
    from bench.config import ConfigError, preset, set_field, validate
    from bench.runs.train import epoch_order

    config = preset("smoke")
    set_field(config, field, str(2**63 - 1))
    with pytest.raises(
        ConfigError, match=rf"{field}=9223372036854775807 is invalid: allowed integers in \[0, 4294967295\]"
    ):
        validate(config)
    set_field(config, field, str(2**32 - 1))
    validate(config)
    assert len(epoch_order(5, 2**32 - 1, 10**6)) == 5  # the largest seed, a late epoch: the generator takes it


def test_collect_from_removes_what_a_killed_collect_left_here_and_only_that(tmp_path):
    """D5's other half: the ``.incoming`` folder of a ``collect --from`` killed mid-copy was never removed.
    The next merge removes those of this host whose process is gone, and keeps a live one's."""
    import os
    import socket
    import subprocess
    import sys

    from bench.runs.collect import merge_stores

    _store_with_a_run(tmp_path / "src")
    target = _store_with_a_run(tmp_path / "t", "acl-smoke-digits-s0-ok")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    killed = target.runs / f".{RUN_ID}.{host}.{dead.pid}.incoming"
    running = target.runs / f".{RUN_ID}.{host}.{os.getppid()}.incoming"
    elsewhere = target.runs / f".{RUN_ID}.another-host.{dead.pid}.incoming"
    for folder in (killed, running, elsewhere):
        folder.mkdir()
        (folder / "rows.csv").write_text("partial")
    merge_stores(target, [tmp_path / "src"])
    assert not killed.exists() and running.exists() and elsewhere.exists()
    assert sorted(run.run_id for run in target.run_dirs()) == ["acl-smoke-digits-s0-ok", RUN_ID]
