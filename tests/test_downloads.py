"""AdvCL's released pseudo-labels (issue 9 §1): pinned, verified, required in the paper preset, recorded.

The released files are never fetched here: a synthetic pickle of the released structure (a dict of
int32 arrays ``pseudo_train_{K}``, protocol 2) is served from a ``file://`` URL, and the pinned
size and sha256 are those of that file (monkeypatched), so the real code path runs offline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle

import numpy as np
import pytest

import bench.methodkit.downloads as downloads
from bench.cli.app import main
from bench.config import ConfigError
from bench.methodkit.downloads import RELEASED_PSEUDO_LABELS, DownloadError, fetch_verified
from bench.runs.plan import RunRequest, build_plan

KS = (2, 10, 50, 100, 500)


def synthetic_labels(n: int = 50_000) -> bytes:
    """The released files' structure: {'pseudo_train_K': int32 array of n labels} for the five K."""
    return pickle.dumps({f"pseudo_train_{k}": (np.arange(n, dtype=np.int32) * 7919) % k for k in KS}, protocol=2)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The CIFAR-10 pinned file served from a file:// tree laid out like the raw GitHub URL."""
    pinned = RELEASED_PSEUDO_LABELS["cifar10"]
    payload = synthetic_labels()
    source = tmp_path / "origin" / pinned.repository / pinned.commit / pinned.path
    source.parent.mkdir(parents=True)
    source.write_bytes(payload)
    monkeypatch.setattr(downloads, "RAW_URL", f"file://{tmp_path / 'origin'}/{{repository}}/{{commit}}/{{path}}")
    fake = dataclasses.replace(pinned, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(RELEASED_PSEUDO_LABELS, "cifar10", fake)
    return fake, source


def paper_request(tmp_path, **overrides) -> RunRequest:
    values = {"data.data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "r"), **overrides}
    return RunRequest(preset="paper", overrides=values, methods=("advcl", "advcl-ip"))


def test_pinned_files_are_the_released_ones():
    """Values from the issue and the git mirror of yqy2001/A-InfoNCE at b28763e (git ls-tree -l)."""
    cifar10, cifar100 = RELEASED_PSEUDO_LABELS["cifar10"], RELEASED_PSEUDO_LABELS["cifar100"]
    assert cifar10.url == (
        "https://raw.githubusercontent.com/yqy2001/A-InfoNCE/"
        "b28763e8554a4788f3e6e4fe99d2d0f19e242dc4/"
        "Asym-AdvCL/data/imagenet_clPretrain_pseudo_labels.pkl"
    )
    assert (cifar10.size, cifar10.sha256) == (
        1_200_903,
        "3f9708d0084839b4a9cb3d2f0fbebf59edd191dbe0b15f0c19c0681af8dbff43",
    )
    assert cifar100.path == "Asym-AdvCL/data/cifar100_pseudo_labels.pkl"
    assert (cifar100.size, cifar100.sha256) == (
        2_001_688,
        "c500f0bec3da902f857294f20060cd9a21960fa0037daaf83992b40c2cb1d6b1",
    )


def test_a_paper_run_without_labels_stops_at_plan_time_with_one_line(tmp_path, capsys):
    """A run stops before any work; its dry run resolves and says what the run would download (issue 24 §5)."""
    with pytest.raises(ConfigError, match="--download.*--param pseudo_labels=FILE"):
        build_plan(paper_request(tmp_path))
    args = ["run", "--preset", "paper", "--methods", "advcl", "--data-dir", str(tmp_path / "data")]
    code = main([*args, "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--download" in err and "--param pseudo_labels=FILE" in err and "imagenet_clPretrain" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "data").exists()
    assert main([*args, "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "would download" in out and "imagenet_clPretrain" in out and "a run needs --download" in out
    assert not (tmp_path / "r").exists() and not (tmp_path / "data").exists()


def test_download_fetches_verifies_and_the_plan_uses_the_file(tmp_path, served):
    pinned, _ = served
    plan = build_plan(paper_request(tmp_path, **{"data.download": "true"}))
    destination = tmp_path / "data" / pinned.name
    assert destination.read_bytes() == synthetic_labels()
    for run in plan.runs:
        assert run.params.pseudo_labels == str(destination)
        assert run.flags == ("pseudo_labels:released-b28763e",)
        assert run.inputs["pseudo_labels"].url == pinned.url and run.inputs["pseudo_labels"].present
    assert [path.name for path in destination.parent.iterdir()] == [pinned.name]  # no temp file left
    again = build_plan(paper_request(tmp_path))  # present and verified: no --download needed any more
    assert again.runs[0].params.pseudo_labels == str(destination)


def test_a_wrong_download_is_an_error_and_is_not_kept(tmp_path, served, monkeypatch):
    pinned, source = served
    source.write_bytes(b"not the released labels")
    with pytest.raises(DownloadError, match="sha256.*the file is not kept"):
        fetch_verified(pinned, tmp_path / "data" / pinned.name)
    assert list((tmp_path / "data").iterdir()) == []
    with pytest.raises(DownloadError, match="cannot download"):
        fetch_verified(dataclasses.replace(pinned, path="missing.pkl"), tmp_path / "data" / pinned.name)


def test_a_damaged_local_copy_is_refused_or_replaced(tmp_path, served):
    pinned, _ = served
    destination = tmp_path / "data" / pinned.name
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="is not the released file"):
        build_plan(paper_request(tmp_path))
    build_plan(paper_request(tmp_path, **{"data.download": "true"}))
    assert destination.read_bytes() == synthetic_labels()


def test_dry_run_with_download_shows_the_pinned_file_and_fetches_nothing(tmp_path, capsys):
    args = [
        "run",
        "--preset",
        "paper",
        "--methods",
        "advcl",
        "--dry-run",
        "--json",
        "--download",
        "--data-dir",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "r"),
    ]
    assert main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = lines[0]["pseudo_labels"]
    pinned = RELEASED_PSEUDO_LABELS["cifar10"]
    assert labels == {
        "source": "released-b28763e",
        "path": str(tmp_path / "data" / pinned.name),
        "url": pinned.url,
        "sha256": pinned.sha256,
        "present": False,
    }
    assert lines[0]["flags"] == ["pseudo_labels:released-b28763e"]
    assert not (tmp_path / "data").exists()


def test_user_files_are_recognised_by_their_hash(tmp_path, served):
    pinned, source = served
    own = tmp_path / "my labels.pkl"
    own.write_bytes(pickle.dumps({f"pseudo_train_{k}": np.zeros(50_000, dtype=np.int32) for k in KS}, protocol=2))
    run = build_plan(
        RunRequest(
            preset="paper",
            overrides={"data.data_dir": str(tmp_path / "data")},
            methods=("advcl",),
            method_params={"*": {"pseudo_labels": str(own)}},
        )
    ).runs[0]
    digest = hashlib.sha256(own.read_bytes()).hexdigest()
    assert run.flags == (f"pseudo_labels:file-my_labels-{digest[:8]}",) and run.params.pseudo_labels == str(own)
    released = build_plan(
        RunRequest(preset="paper", methods=("advcl",), method_params={"*": {"pseudo_labels": str(source)}})
    ).runs[0]
    assert released.flags == ("pseudo_labels:released-b28763e",)  # the released bytes, wherever they are
    with pytest.raises(ConfigError, match="released file for cifar10, and the run pretrains on cifar100"):
        build_plan(
            RunRequest(
                preset="paper",
                overrides={"data.name": "cifar100"},
                methods=("advcl",),
                method_params={"*": {"pseudo_labels": str(source)}},
            )
        )
    with pytest.raises(ConfigError, match="not a file"):
        build_plan(
            RunRequest(
                preset="paper", methods=("advcl",), method_params={"*": {"pseudo_labels": str(tmp_path / "nope.pkl")}}
            )
        )


def test_smoke_keeps_the_pixel_stand_in_and_says_so():
    plan = build_plan(RunRequest(methods=("advcl", "acl"), dry_run=True))
    flags = {run.method: run.flags for run in plan.runs}
    assert flags == {"advcl": ("pseudo_labels:pixels",), "acl": ()}
    with pytest.raises(ConfigError, match="stl10"):  # the paper rows have no STL-10 settings: refused first
        build_plan(RunRequest(preset="paper", overrides={"data.name": "stl10"}, methods=("advcl",), dry_run=True))
