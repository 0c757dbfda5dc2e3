"""``bench export``: each format round-trips to the stored classifier's logits, with a complete sidecar.

The stored run is built by hand (a small CNN classifier with non-trivial BN statistics, two rows), so
the test needs no training; the expected sidecar values are the ones written into the store here.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from report_stores import row

from bench.cli.app import main
from bench.config import ConfigError
from bench.engine.checkpoints import CheckpointError, classifier_state
from bench.engine.models import Classifier
from bench.methodkit import registry
from bench.products.export import FORMATS, export_run, load_exported, sidecar_path
from bench.store.atomic import save_torch_atomic
from bench.store.results import ResultsStore
from bench.store.rows import ResultRow

RUN_ID = "simclr-smoke-digits-s0-abc"


@pytest.fixture
def stored(tmp_path):
    """A store with one run holding an SLF classifier, its rows and its config; returns (results dir, classifier)."""
    torch.manual_seed(0)
    classifier = Classifier(registry.get("simclr")().build_model("small_cnn"), 10, "normal")
    with torch.no_grad():
        for name, buffer in classifier.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    classifier.eval()
    results = tmp_path / "r"
    store = ResultsStore(results)
    run = store.run(RUN_ID).create()
    save_torch_atomic(classifier_state(classifier), run.classifier("SLF"))
    run.write_json(run.config, {"method": "simclr", "data": {"name": "digits"}, "evaluate": {"epsilon": 0.1}})
    rows = [
        ResultRow.from_csv({key: str(value) for key, value in row(RUN_ID, "simclr", "SLF", attack, value).items()})
        for attack, value in (("clean", 90.0), ("pgd20", 40.0))
    ]
    store.record(RUN_ID, rows, {"finished": True})
    return results, classifier


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_to_the_same_logits(stored, tmp_path, fmt):
    results, classifier = stored
    out = export_run(results, RUN_ID, "SLF", tmp_path / f"model.{fmt}", fmt)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = classifier(images), load_exported(out, allow_torchscript=fmt == "torchscript")(images)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    if fmt != "torchscript":  # the same tensors in the same module: bit-identical
        assert torch.equal(got, expected)


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_sidecar_describes_the_run(stored, tmp_path, fmt):
    results, _ = stored
    out = export_run(results, RUN_ID, "SLF", tmp_path / "model.bin", fmt)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["weights_format"] == fmt and sidecar["method"] == "simclr" and sidecar["run_id"] == RUN_ID
    assert sidecar["arch"] == "small_cnn" and sidecar["bn_branch"] == "normal" and sidecar["num_classes"] == 10
    assert sidecar["input"] == {
        "range": [0.0, 1.0],
        "channels": 3,
        "normalization": "none",
        "normalization_inside_model": True,
    }
    assert sidecar["dataset"] == "digits" and sidecar["threat_model"] == {"norm": "Linf", "epsilon": 0.1}
    assert sidecar["metrics"] == {"clean": 90.0, "pgd20": 40.0} and sidecar["run_code_version"] == "0.1.0+abc"
    assert sidecar["exported_by"].startswith("0.1.0")
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_robustbench_file_is_a_plain_state_dict_and_module_prefixes_load(stored, tmp_path):
    results, classifier = stored
    out = export_run(results, RUN_ID, "SLF", tmp_path / "model.pt", "robustbench")
    checkpoint = torch.load(out, weights_only=True)
    assert list(checkpoint) == ["state_dict"] and list(checkpoint["state_dict"]) == list(classifier.state_dict())
    torch.save({"state_dict": {f"module.{key}": value for key, value in checkpoint["state_dict"].items()}}, out)
    sidecar = json.loads(sidecar_path(out).read_text())  # the file changed on purpose: so does its recorded hash
    sidecar_path(out).write_text(json.dumps({**sidecar, "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}))
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_exported(out)(images), classifier(images))


def test_safetensors_metadata_carries_the_sidecar(stored, tmp_path):
    from safetensors import safe_open

    results, _ = stored
    out = export_run(results, RUN_ID, "SLF", tmp_path / "model.safetensors", "safetensors")
    with safe_open(str(out), framework="pt") as handle:
        embedded = json.loads(handle.metadata()["acl_bench"])
    sidecar = json.loads(sidecar_path(out).read_text())
    assert embedded == {key: value for key, value in sidecar.items() if key != "sha256"}


def test_cli_export_into_a_directory_names_the_file_by_format(stored, tmp_path, capsys):
    results, _ = stored
    assert (
        main(
            [
                "export",
                RUN_ID,
                "--scheme",
                "SLF",
                "--format",
                "safetensors",
                "--out",
                str(tmp_path),
                "--results-dir",
                str(results),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / f"{RUN_ID}-SLF.safetensors")


def test_bad_format_missing_sidecar_and_foreign_sidecar(stored, tmp_path):
    results, _ = stored
    allowed = r"allowed \['torchscript', 'robustbench', 'safetensors'\]"
    with pytest.raises(ConfigError, match=r"format='onnx' is invalid: " + allowed):
        export_run(results, RUN_ID, "SLF", tmp_path / "x.onnx", "onnx")
    out = export_run(results, RUN_ID, "SLF", tmp_path / "model.pt", "robustbench")
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="is not an acl-bench export sidecar"):
        load_exported(out)
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="has no sidecar"):
        load_exported(out)
