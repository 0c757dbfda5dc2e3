"""``bench reproduce``: the comparison beside the published table, from a store of (synthetic) rows."""

from __future__ import annotations

import csv

import pytest

from bench.config import ConfigError
from bench.products.reproduce import get_table, reproduce_plan, write_reproduction
from bench.runs.plan import RunRequest
from bench.store.results import ResultsStore
from bench.store.rows import ResultRow

REFERENCE_COLUMNS = ("method", "dataset", "eval_dataset", "scheme", "attack", "metric", "value", "source", "note")


def plan_for(tmp_path, seeds=(0,), **overrides):
    request = RunRequest(
        preset="paper",
        dry_run=True,
        overrides={
            "data.download": "true",
            "data.data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "reports_dir": str(tmp_path / "reports"),
            **overrides,
        },
    )
    return reproduce_plan(get_table("ainfonce-table1"), request, ["cifar10"], list(seeds))


def row(run, scheme, attack, metric, value) -> ResultRow:
    return ResultRow(
        run_id=run.run_id,
        timestamp="2025-01-01T00:00:00+00:00",
        preset="paper",
        method=run.method,
        dataset="cifar10",
        eval_dataset="cifar10",
        scheme=scheme,
        attack=attack,
        metric=metric,
        value=value,
        epsilon=8 / 255,
        n_eval=10000,
        seed=run.config.seed,
        pretrain_epochs=400,
        finetune_epochs=25,
        config_hash=run.config_hash,
        code_version="test",
        torch_version="test",
        device="cpu",
        wall_s=None,
        flags=(),
        protocol="ainfonce",
    )


def write_reference(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=REFERENCE_COLUMNS)
        writer.writeheader()
        for method, scheme, attack, value in rows:
            writer.writerow(
                {
                    "method": method,
                    "dataset": "cifar10",
                    "eval_dataset": "cifar10",
                    "scheme": scheme,
                    "attack": attack,
                    "metric": "accuracy",
                    "value": value,
                    "source": "test",
                    "note": "",
                }
            )


def store_rows(plan, values):
    """``values``: (method, seed) -> list of (scheme, attack, metric, value); written as complete runs."""
    store = ResultsStore(plan.results_dir)
    for run in plan.runs:
        rows = [row(run, *entry) for entry in values.get((run.method, run.config.seed), [])]
        if rows:
            store.record(run.run_id, rows, {"finished": "now"})


def test_reproduction_sets_ours_beside_the_published_cells_with_delta(tmp_path):
    plan = plan_for(tmp_path, seeds=(0, 1))
    assert {run.config.finetune.protocol for run in plan.runs} == {"ainfonce"} and len(plan.runs) == 16
    store_rows(
        plan,
        {
            ("advcl", 0): [("SLF", "pgd20", "accuracy", 40.0), ("SLF", "pgd20", "accuracy_best_epoch", 48.0)],
            ("advcl", 1): [("SLF", "pgd20", "accuracy", 42.0), ("SLF", "pgd20", "accuracy_best_epoch", 50.0)],
            ("rocl", 0): [("SLF", "clean", "accuracy", 80.0), ("SLF", "clean", "accuracy_best_epoch", 81.0)],
        },
    )
    reference = tmp_path / "results" / "reference"
    write_reference(
        reference / "ainfonce_table1.csv", [("advcl", "SLF", "pgd20", 50.0), ("rocl", "SLF", "clean", 83.0)]
    )
    write_reference(reference / "author_quoted.csv", [("advcl", "SLF", "pgd20", 50.45)])
    write_reference(
        reference / "robustssl_leaderboard.csv", [("a-infonce (unspecified variant)", "SLF", "autoattack", 42.72)]
    )
    written = write_reproduction(get_table("ainfonce-table1"), plan, reference, tmp_path / "reports")
    assert [path.name for path in written] == [
        "reproduce_ainfonce-table1_cifar10.md",
        "reproduce_ainfonce-table1_cifar10.csv",
    ]
    lines = {(line["method"], line["scheme"], line["attack"]): line for line in csv.DictReader(open(written[1]))}
    advcl = lines[("advcl", "SLF", "pgd20")]  # the AdvCL script reports its best test epoch: 49 - 50
    assert (float(advcl["ours_last"]), float(advcl["ours_best_epoch"]), advcl["reported_epoch"]) == (41.0, 49.0, "best")
    assert float(advcl["delta"]) == pytest.approx(-1.0) and "50.45 [the authors' own script]" in advcl["others"]
    rocl = lines[("rocl", "SLF", "clean")]  # linear_eval.py + robustness_test.py: the last epoch, 80 - 83
    assert rocl["reported_epoch"] == "last" and float(rocl["delta"]) == pytest.approx(-3.0)
    assert lines[("advcl-ip", "AFF", "autoattack")]["published"] == ""  # not published: no cell, no Δ
    text = written[0].read_text()
    assert "protocol ainfonce" in text
    assert "| advcl | SLF | pgd20 | 41.00 ± 1.41 (n=2) | 49.00 ± 1.41 (n=2) | best" in text
    assert "a-infonce (unspecified variant) SLF autoattack: 42.72 [robustssl]" in text


def test_without_the_papers_file_its_cells_stay_empty(tmp_path):
    plan = plan_for(tmp_path)
    store_rows(plan, {("advcl", 0): [("SLF", "clean", "accuracy", 80.0)]})
    written = write_reproduction(get_table("ainfonce-table1"), plan, tmp_path / "nowhere", tmp_path / "reports")
    text = written[0].read_text()
    assert "absent: –" in text and "| advcl | SLF | clean | 80.00 | – | last | – | – | – |" in text


def test_reproduction_validates_its_table_dataset_and_fixed_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"table='nope' is invalid: allowed \['ainfonce-table1', 'robustssl'\]"):
        get_table("nope")
    with pytest.raises(ConfigError, match="dataset='stl10' is invalid for ainfonce-table1"):
        reproduce_plan(get_table("ainfonce-table1"), RunRequest(preset="paper", dry_run=True), ["stl10"], [0])
    unified = plan_for(tmp_path, **{"finetune.protocol": "unified"})  # the same rows under another protocol
    assert {run.config.finetune.protocol for run in unified.runs} == {"unified"}
