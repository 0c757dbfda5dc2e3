"""A BYOL-style plugin written from docs/adding-a-method.md alone, installed through an entry point and
run through ``bench run``, ``bench report`` and ``bench export`` (issue 19's done-when).

The plugin is ``tests/data/plugin/acl_bench_byorl.py``, which the doc includes verbatim (checked here);
it is installed as a pip install would: the module and a ``.dist-info`` with its entry point on sys.path.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
from fake_plugin import install_plugin
from tiny_run import TINY

from bench.cli.app import main
from bench.engine.checkpoints import load_classifier
from bench.methodkit import registry
from bench.products.export import load_exported

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "data" / "plugin" / "acl_bench_byorl.py"
DOC = ROOT / "docs" / "adding-a-method.md"


def test_the_doc_shows_the_tested_plugin_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert PLUGIN.read_text() in blocks


def install(tmp_path: Path, monkeypatch) -> None:
    """What ``pip install`` of the doc's package leaves on sys.path: the module and its entry point."""
    install_plugin(tmp_path / "site", PLUGIN.stem, PLUGIN.read_text(), "byorl", monkeypatch)


@pytest.mark.e2e
def test_a_byol_style_plugin_runs_reports_and_exports(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch)
    results, reports = tmp_path / "r", tmp_path / "rep"
    try:
        assert main(["list"]) == 0
        listing = capsys.readouterr().out
        assert "byorl" in listing and "byorl-ip" not in listing  # a regression loss: no variants
        assert main(["run", "--methods", "byorl", "--preset", "paper", "--dry-run"]) == 0
        assert "byorl has no published paper settings: it runs under the harness defaults" in capsys.readouterr().out
        run = ["run", "--methods", "byorl", "--results-dir", str(results), "--reports-dir", str(reports), *TINY]
        assert main(run) == 0
        with open(results / "results.csv", newline="") as stream:
            rows = [row for row in csv.DictReader(stream) if row["method"] == "byorl"]
        assert {(row["scheme"], row["attack"]) for row in rows} >= {("SLF", "clean"), ("SLF", "pgd20")}
        run_id = rows[0]["run_id"]
        encoder = torch.load(results / "runs" / run_id / "encoder.pt", weights_only=True)["model"]
        assert not any(key.startswith(("target.", "predictor.")) for key in encoder)  # the online network only
        checkpoint = torch.load(results / "runs" / run_id / "pretrain.ckpt", weights_only=True)["model"]
        assert any(key.startswith("target.") for key in checkpoint) and "predictor.0.weight" in checkpoint

        capsys.readouterr()
        shutil.rmtree(reports)  # written by bench run: the report command writes it afresh
        assert main(["report", "--results-dir", str(results), "--reports-dir", str(reports), "--quiet"]) == 0
        assert any("byorl" in page.read_text() for page in reports.glob("*.md"))

        out = tmp_path / "byorl.pt"
        assert main(["export", run_id, "--scheme", "SLF", "--out", str(out), "--results-dir", str(results)]) == 0
        stored = load_classifier(results / "runs" / run_id / "classifier_SLF.pt")
        images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(load_exported(out, allow_torchscript=True)(images), stored(images))  # our own export
    finally:
        registry.unregister("byorl")
