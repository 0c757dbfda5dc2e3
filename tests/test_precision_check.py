"""scripts/precision_check.py runs on CPU with tiny settings (bf16 autocast switched on for CPU inside
it), so the code the GPU call runs with real settings is exercised here: both arms pretrain, finetune
and evaluate, the paired tests, loss curves and sign agreement are reported, and the files are written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "precision_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("precision_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sign_agreement_and_loss_comparison():
    check = _script()
    a, b = [torch.tensor([1, -1, 0, 1], dtype=torch.int8)], [torch.tensor([1, 1, 0, 1], dtype=torch.int8)]
    assert check.sign_agreement(a, b) == [0.75]
    with pytest.raises(ValueError, match="same step count"):
        check.sign_agreement(a, [])
    losses = check.loss_comparison([2.0, 1.0], [2.0, 1.1])
    assert losses["max_relative"] == pytest.approx(0.1) and losses["mean_relative"] == pytest.approx(0.05)


@pytest.mark.slow
@pytest.mark.e2e
def test_precision_check_runs_both_arms_on_cpu(tmp_path):
    report = _script().run(["--out", str(tmp_path), "--tiny", "--device", "cpu", "--methods", "acl", "--n-eval", "16"])
    entry = report["methods"]["acl"]
    assert [row["attack"] for row in entry["accuracy"]] == ["clean", "pgd20"]
    assert all(row["n"] == 16 for row in entry["accuracy"])
    assert entry["loss"]["steps"] == 5 and entry["loss"]["first_fp32"] != entry["loss"]["first_bf16"]  # bf16 ran
    assert len(entry["agreement_trained"]) >= 1 and all(0.5 < v <= 1.0 for v in entry["agreement_trained"])
    assert report["verdict"].startswith("bf16")
    assert json.loads((tmp_path / "precision.json").read_text())["methods"]["acl"]["loss"]["steps"] == 5
    assert "Verdict" in (tmp_path / "precision.md").read_text()
