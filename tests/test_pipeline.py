"""`bench run` end to end on the embedded digits: rows, reruns, reports, reproducibility record."""
from __future__ import annotations

import csv
import json

from bench.cli import main
from bench.results import COLUMNS


def _run(tmp_path, *extra):
    return main(["run", "--methods", "simclr", "acl", "--results-dir", str(tmp_path / "r"),
                 "--reports-dir", str(tmp_path / "rep"), "--epochs", "1", "--finetune-epochs", "1",
                 "--n-eval", "24", "--quiet", "--device", "cpu", "--set", "pretrain.batch_size=64",
                 "--set", "finetune.batch_size=512", "--attacks", "clean,pgd20", *extra])


def _rows(tmp_path):
    with open(tmp_path / "r" / "results.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_run_stores_every_scheme_and_attack_then_skips_reruns(tmp_path):
    assert _run(tmp_path) == 0
    rows = _rows(tmp_path)
    assert tuple(rows[0]) == COLUMNS
    measured = {(r["method"], r["scheme"], r["attack"]) for r in rows if r["metric"] == "accuracy"}
    for method in ("simclr", "acl"):
        for scheme in ("SLF", "ALF", "AFF"):
            for attack in ("clean", "pgd20"):
                assert (method, scheme, attack) in measured
    assert all(r["n_eval"] == "24" and float(r["epsilon"]) == 0.06 for r in rows)
    assert any(r["metric"] == "accuracy_best_epoch" for r in rows)
    run_dir = tmp_path / "r" / "runs" / rows[0]["run_id"]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["seed"] == 0 and recorded["environment"]["torch_version"]
    assert (run_dir / "encoder.pt").exists() and (run_dir / "pretrain_history.csv").exists()
    assert (tmp_path / "rep" / "index.md").exists()

    assert _run(tmp_path) == 0  # same config and seed: skipped, nothing added
    assert len(_rows(tmp_path)) == len(rows)
    assert _run(tmp_path, "--force") == 0  # rerun replaces, never duplicates
    assert len(_rows(tmp_path)) == len(rows)
    assert _run(tmp_path, "--seed", "1") == 0  # another seed is another run
    assert len(_rows(tmp_path)) == 2 * len(rows)


def test_stored_encoder_can_be_finetuned_again_and_exported(tmp_path):
    code = main(["run", "--methods", "acl", "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep"),
                 "--epochs", "1", "--finetune-epochs", "1", "--n-eval", "16", "--quiet", "--device", "cpu",
                 "--set", "pretrain.batch_size=64", "--set", "finetune.batch_size=512", "--attacks", "clean,pgd20",
                 "--schemes", "SLF"])
    assert code == 0
    run_id = _rows(tmp_path)[0]["run_id"]
    encoder = tmp_path / "r" / "runs" / run_id / "encoder.pt"
    code = main(["evaluate", "--checkpoint", str(encoder), "--format", "bench", "--name", "acl-reloaded",
                 "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep"), "--finetune-epochs", "1",
                 "--n-eval", "16", "--quiet", "--device", "cpu", "--set", "finetune.batch_size=512",
                 "--attacks", "clean,pgd20", "--schemes", "SLF"])
    assert code == 0
    reloaded = [r for r in _rows(tmp_path) if r["method"] == "acl-reloaded"]
    assert {r["attack"] for r in reloaded} >= {"clean", "pgd20"}
    out = tmp_path / "exported.pt"
    assert main(["export", run_id, "--scheme", "SLF", "--out", str(out), "--results-dir", str(tmp_path / "r")]) == 0
    import torch

    exported = torch.jit.load(str(out))
    assert exported(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--results-dir", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
