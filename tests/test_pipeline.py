"""`bench run` end to end on the embedded digits: rows, reruns, reports, reproducibility record."""

from __future__ import annotations

import csv
import json

import pytest
from tiny_run import TINY, TINY_EVALUATION, TINY_PRETRAINING, copy_store

from bench.cli.app import main
from bench.store.rows import COLUMNS


def _run(tmp_path, *extra):
    return main(
        [
            "run",
            "--methods",
            "simclr",
            "acl",
            "--results-dir",
            str(tmp_path / "r"),
            "--reports-dir",
            str(tmp_path / "rep"),
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--n-eval",
            "24",
            "--quiet",
            "--device",
            "cpu",
            "--set",
            "pretrain.batch_size=256",
            "--set",
            "finetune.batch_size=512",
            "--set",
            "finetune.alf_steps=1",  # ALF's and TRADES' inner PGD: what is stored is checked, not how robust
            "--set",
            "finetune.trades_steps=1",
            *TINY_PRETRAINING,  # pretraining's PGD too, at 8 px
            "--attacks",
            "clean,pgd20",
            *extra,
        ]
    )


def _dirs(tmp_path) -> list[str]:
    return ["--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep")]


def _rows(tmp_path):
    with open(tmp_path / "r" / "results.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
@pytest.mark.e2e
def test_run_stores_every_scheme_and_attack(tmp_path):
    assert _run(tmp_path, "--no-figures") == 0  # one forked worker a method: ALF and AFF there too
    rows = _rows(tmp_path)
    assert tuple(rows[0]) == COLUMNS
    measured = {(r["method"], r["scheme"], r["attack"]) for r in rows if r["metric"] == "accuracy"}
    for method in ("simclr", "acl"):
        for scheme in ("SLF", "ALF", "AFF"):
            for attack in ("clean", "pgd20"):
                assert (method, scheme, attack) in measured
    assert all(r["n_eval"] == "24" for r in rows)
    assert all(float(r["epsilon"]) == 0.06 for r in rows if r["metric"] != "accuracy_vs_epsilon")
    curve = sorted({float(r["epsilon"]) for r in rows if r["metric"] == "accuracy_vs_epsilon"})
    assert curve == [0.03, 0.09]  # the smoke preset's other budgets; 0.06 is the main PGD-20 row
    assert not any(r["metric"] == "accuracy_best_epoch" for r in rows)  # smoke: no per-epoch evaluation
    corrupted = {(r["method"], r["scheme"]) for r in rows if r["attack"] == "corruption-mean"}
    assert corrupted == {("simclr", "SLF"), ("acl", "SLF")}  # smoke: regenerated digits corruptions, SLF only
    run_dir = tmp_path / "r" / "runs" / rows[0]["run_id"]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["seed"] == 0 and recorded["environment"]["torch_version"]
    assert (run_dir / "encoder.pt").exists() and (run_dir / "pretrain_history.csv").exists()
    assert (tmp_path / "rep" / "index.md").exists()

    assert _run(tmp_path, "--no-report") == 0  # same config and seed: skipped, nothing added
    assert len(_rows(tmp_path)) == len(rows)


@pytest.mark.e2e
def test_reruns_skip_a_complete_run_force_replaces_it_and_another_seed_adds_one(tmp_path, shared_run):
    # on a shared tiny store of two methods (one scheme): what is tested is the store's bookkeeping, the same for
    # any scheme
    copy_store(shared_run("--methods", "simclr", "acl", *TINY), tmp_path)  # made once per session
    rows = _rows(tmp_path)
    simclr = [row for row in rows if row["method"] == "simclr"]

    def rerun(*extra: str) -> int:
        return main(["run", *TINY, *_dirs(tmp_path), "--no-report", *extra])

    assert rerun("--methods", "simclr", "acl") == 0 and _rows(tmp_path) == rows  # the same runs: skipped
    assert rerun("--methods", "simclr", "--force") == 0  # a rerun replaces, never duplicates
    assert sorted(row["run_id"] for row in _rows(tmp_path)) == sorted(row["run_id"] for row in rows)
    assert [row for row in _rows(tmp_path) if row["method"] == "acl"] == [r for r in rows if r["method"] == "acl"]
    assert rerun("--methods", "simclr", "--seed", "1") == 0  # another seed: another run
    added = [row for row in _rows(tmp_path) if row["run_id"] not in {row["run_id"] for row in rows}]
    assert len(_rows(tmp_path)) == len(rows) + len(simclr) and {row["seed"] for row in added} == {"1"}


@pytest.mark.e2e
def test_stored_encoder_can_be_finetuned_again_and_exported(tmp_path, shared_run):
    copy_store(shared_run("--methods", "acl", *TINY), tmp_path)  # made once per session
    run_id = _rows(tmp_path)[0]["run_id"]
    encoder = tmp_path / "r" / "runs" / run_id / "encoder.pt"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(encoder),
            "--format",
            "bench",
            "--name",
            "acl-reloaded",
            "--results-dir",
            str(tmp_path / "r"),
            "--reports-dir",
            str(tmp_path / "rep"),
            "--finetune-epochs",
            "1",
            "--n-eval",
            "16",
            "--quiet",
            "--device",
            "cpu",
            "--set",
            "finetune.batch_size=512",
            "--attacks",
            "clean,pgd20",
            "--schemes",
            "SLF",
            "--no-report",
            *TINY_EVALUATION,
        ]
    )
    assert code == 0
    reloaded = [r for r in _rows(tmp_path) if r["method"] == "acl-reloaded"]
    assert {r["attack"] for r in reloaded} >= {"clean", "pgd20"}
    out = tmp_path / "exported.pt"
    assert main(["export", run_id, "--scheme", "SLF", "--out", str(out), "--results-dir", str(tmp_path / "r")]) == 0
    import torch

    exported = torch.jit.load(str(out))
    assert exported(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    code = main(
        ["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--results-dir", str(tmp_path / "r"), "--quiet"]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.e2e
def test_parallel_and_sequential_runs_store_the_same_runs(tmp_path):
    for jobs in ("1", "2"):
        assert (
            main(
                [
                    "run",
                    "--methods",
                    "simclr",
                    "rocl",
                    "--results-dir",
                    str(tmp_path / jobs),
                    "--reports-dir",
                    str(tmp_path / f"rep{jobs}"),
                    "--epochs",
                    "1",
                    "--finetune-epochs",
                    "1",
                    "--n-eval",
                    "16",
                    "--quiet",
                    "--device",
                    "cpu",
                    "--jobs",
                    jobs,
                    "--schemes",
                    "SLF",
                    "--attacks",
                    "clean,pgd20",
                    "--set",
                    "pretrain.batch_size=256",
                    *TINY_PRETRAINING,  # which runs and rows each stores is compared, not how robust they are
                    "--no-report",  # the rows are compared, not the report
                ]
            )
            == 0
        )
    tables = {}
    for jobs in ("1", "2"):
        with open(tmp_path / jobs / "results.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
        tables[jobs] = sorted((r["run_id"], r["scheme"], r["attack"], r["metric"]) for r in rows)
        assert all((tmp_path / jobs / "runs" / run_id / "done.json").exists() for run_id, *_ in tables[jobs])
    assert tables["1"] == tables["2"] and {key[0].split("-")[0] for key in tables["1"]} == {"simclr", "rocl"}


def test_jobs_resolution():
    import pytest
    import torch

    from bench.config import ConfigError
    from bench.engine.device import available_cores
    from bench.runs.pipeline import resolve_jobs

    cpu = torch.device("cpu")  # CUDA (one run per GPU): tests/test_workers.py
    assert resolve_jobs(0, cpu, 13) == min(available_cores(), 13)
    assert resolve_jobs(available_cores(), cpu, 1) == 1 and resolve_jobs(1, cpu, 13) == 1
    with pytest.raises(ConfigError, match=f"allowed 0 \\(auto\\) to {available_cores()}"):
        resolve_jobs(available_cores() + 1, cpu, 13)
    with pytest.raises(ConfigError, match="jobs=-1 is invalid"):
        resolve_jobs(-1, cpu, 13)


def _tiny(tmp_path, *extra):
    return main(["run", "--methods", "acl", *_dirs(tmp_path), *TINY, "--no-report", *extra])  # none reads a report


@pytest.mark.e2e
def test_changing_only_evaluation_settings_reuses_the_encoder(tmp_path, shared_run):
    import torch

    copy_store(shared_run("--methods", "acl", *TINY), tmp_path)  # = _tiny(tmp_path), made once per session
    assert _tiny(tmp_path, "--epsilon", "0.05", "--set", "evaluate.epsilon_curve=0.01,0.05") == 0
    runs = {
        json.loads((path.parent / "config.json").read_text())["evaluate"]["epsilon"]: path.parent
        for path in (tmp_path / "r" / "runs").glob("*/done.json")
    }
    first, second = runs[0.06], runs[0.05]
    assert json.loads((second / "done.json").read_text())["encoder_from"] == first.name
    weights = [torch.load(run / "encoder.pt", weights_only=True)["model"] for run in (first, second)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    curve = [r for r in _rows(tmp_path) if r["metric"] == "accuracy_vs_epsilon" and r["run_id"] == second.name]
    assert sorted(float(r["epsilon"]) for r in curve) == [0.01]  # 0.05 is the main ε: its PGD-20 row
    assert (second / "sanity_SLF.json").exists()
    assert _tiny(tmp_path, "--epochs", "2") == 0  # a pretraining setting: a new encoder
    newest = max((tmp_path / "r" / "runs").glob("*/done.json"), key=lambda path: path.stat().st_mtime)
    assert json.loads(newest.read_text())["encoder_from"] == newest.parent.name


@pytest.mark.e2e
def test_evaluate_labels_from_the_checkpoint_and_writes_nothing_on_bad_input(tmp_path, capsys, shared_run):
    copy_store(shared_run("--methods", "acl", *TINY), tmp_path)  # = _tiny(tmp_path), made once per session
    encoder = next((tmp_path / "r" / "runs").glob("*/encoder.pt"))
    before = sorted((tmp_path / "r" / "runs").iterdir())
    common = [
        "--results-dir",
        str(tmp_path / "r"),
        "--reports-dir",
        str(tmp_path / "rep"),
        "--quiet",
        "--device",
        "cpu",
        "--finetune-epochs",
        "1",
        "--n-eval",
        "16",
        "--schemes",
        "SLF",
        "--attacks",
        "clean,pgd20",
        *TINY_EVALUATION,  # the labels and the refusals are checked, not the evaluation's extras
    ]
    assert main(["evaluate", "--checkpoint", str(encoder), "--format", "nope", *common]) == 2
    assert main(["evaluate", "--robustbench-model", "Standard", *common]) == 2
    assert "invalid for a RobustBench model" in capsys.readouterr().err
    assert sorted((tmp_path / "r" / "runs").iterdir()) == before
    assert main(["evaluate", "--checkpoint", str(encoder), *common]) == 0
    reloaded = [r for r in _rows(tmp_path) if r["method"] == "acl:encoder"]
    assert reloaded and {r["dataset"] for r in reloaded} == {"digits"} and reloaded[0]["pretrain_epochs"] == "1"


@pytest.mark.e2e
def test_transfer_finetunes_and_evaluates_on_another_dataset_at_the_pretraining_size(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 8)):
        for label, brightness in (("dark", 40), ("light", 200)):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(brightness, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")
    assert _tiny(tmp_path, "--eval-dataset", "folder", "--data-dir", str(root), "--n-eval", "0") == 0
    rows = [r for r in _rows(tmp_path) if r["metric"] == "accuracy"]
    assert {(r["dataset"], r["eval_dataset"]) for r in rows} == {("digits", "shapes")}
    assert {r["n_eval"] for r in rows} == {"16"}  # the whole 2 × 8 test split
    from bench.engine.checkpoints import load_classifier

    classifier = load_classifier(next((tmp_path / "r" / "runs").glob("*/classifier_SLF.pt")))
    assert classifier.head.out_features == 2
    from bench.runs.pipeline import DataCache
    from bench.runs.plan import RunRequest, assemble

    config = assemble(RunRequest(overrides={"data.eval_name": "folder", "data.data_dir": str(root)}))
    loaded = DataCache(torch.device("cpu")).get("folder", config)
    assert loaded.x_test.shape[1:] == (3, 16, 16)  # 24 px images at the pretraining resolution
