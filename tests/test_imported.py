"""``bench evaluate/finetune --checkpoint`` and ``--robustbench-model`` as runs of a plan (bench.runs.imported).

The external run keeps the id and identity it always had (users' stores hold them), and goes through
``bench run``'s pipeline: skip check, ``--force``, the finish stage, the index.
"""

import dataclasses
import json

import pytest
import torch
from torch import nn

import bench.runs.external as external
from bench.config import config_hash, to_dict
from bench.engine.checkpoints import EncoderCheckpoint
from bench.engine.models import build_contrastive_model
from bench.products.report.compute import pretrain_seconds
from bench.runs.external import imported_plan
from bench.runs.pipeline import run_plan
from bench.runs.plan import RunRequest, assemble
from bench.store.atomic import save_torch_atomic
from bench.store.provenance import file_digest
from bench.store.results import ResultsStore

TINY = {
    "finetune.epochs": "1",
    "finetune.milestones": "1",
    "finetune.schemes": "SLF",
    "finetune.batch_size": "512",
    "evaluate.n_eval": "16",
    "evaluate.attacks": "clean",
    "evaluate.epsilon_curve": "",
    "evaluate.corruptions": "none",
    "device": "cpu",
}


def encoder_file(path, epochs: int | None = 7):
    """A small-CNN encoder in our format, recording its method, dataset and pretraining epochs."""
    torch.manual_seed(0)
    model = build_contrastive_model("small_cnn", ("normal",), "simclr", normalization="none")
    state = EncoderCheckpoint(
        model=model.state_dict(),
        arch="small_cnn",
        bn_branches=("normal",),
        projector="simclr",
        normalization="none",
        method="simclr",
        dataset="digits",
        pretrain_epochs=epochs,
    ).to_state()
    return save_torch_atomic(state, path)


def request(tmp_path, **overrides) -> RunRequest:
    return RunRequest(overrides={**TINY, "results_dir": str(tmp_path / "r"), **overrides})


def plan_of(tmp_path, path, **kwargs):
    arguments = {"checkpoint_format": "bench", "branch": None, "name": None, "robustbench_model": None, **kwargs}
    return imported_plan(request(tmp_path), checkpoint=str(path), **arguments)


def test_the_run_keeps_the_identity_and_id_external_runs_always_had(tmp_path):
    path = encoder_file(tmp_path / "enc.pt")
    (run,) = plan_of(tmp_path, path).runs
    identity = {
        "config": to_dict(assemble(request(tmp_path))),
        "source": str(path.resolve()),
        "format": "bench",
        "branch": None,
        "file": file_digest(path),
        "pretrain_dataset": "digits",
    }
    assert run.identity == identity
    assert run.run_id == f"simclr-enc-external-s0-{config_hash(identity)}" and run.config_hash == config_hash(identity)
    assert run.method == "simclr:enc" and run.imported.pretrain_epochs == 7 and run.imported.protocol_method == "simclr"
    (named,) = plan_of(tmp_path, path, name="mine", pretrain_dataset="cifar10").runs
    assert named.run_id.startswith("mine-external-s0-") and named.identity["pretrain_dataset"] == "cifar10"


@pytest.mark.e2e
def test_an_imported_run_is_skipped_forced_and_finished_by_the_pipeline(tmp_path):
    path = encoder_file(tmp_path / "enc.pt")
    plan = plan_of(tmp_path, path)
    (run,) = plan.runs
    assert [outcome.status for outcome in run_plan(plan)] == ["completed"]
    run_dir = ResultsStore(tmp_path / "r").run(run.run_id)
    rows = run_dir.read_rows()
    assert {(row.method, row.dataset, row.pretrain_epochs, row.scheme) for row in rows} == {
        ("simclr:enc", "digits", 7, "SLF")
    }
    recorded = json.loads(run_dir.config.read_text())
    assert {key: recorded[key] for key in run.identity} == run.identity and recorded["schemes"] == ["SLF"]
    assert json.loads(run_dir.pretrain_summary.read_text())["imported"]["file"] == file_digest(path)
    assert not run_dir.encoder.exists()  # the file is read where it is, never copied
    assert [outcome.status for outcome in run_plan(plan)] == ["skipped"]
    run_dir.done.unlink()  # killed after its scheme stored its rows, before the finish stage
    stored = run_dir.scheme_rows("SLF").read_bytes()
    assert [outcome.status for outcome in run_plan(dataclasses.replace(plan, resume=True))] == ["completed"]
    assert run_dir.scheme_rows("SLF").read_bytes() == stored and run_dir.read_rows() == rows  # not measured again
    forced = dataclasses.replace(plan, force=True)
    encoder_file(path, epochs=8)  # the file changed since it was planned: its run must not measure it
    (outcome,) = run_plan(forced)
    assert outcome.status == "failed" and "changed since its run was planned" in outcome.reason
    assert not run_dir.is_complete() and not run_dir.rows.exists()  # --force cleared the old result


def test_an_imported_encoders_unknown_pretraining_time_is_left_out_of_the_compute_plot(tmp_path):
    store = ResultsStore(tmp_path / "r")
    store.run("imported").write_json(store.run("imported").done, {"pretrain_wall_s": None, "encoder_from": "imported"})
    store.run("trained").write_json(store.run("trained").done, {"pretrain_wall_s": 12.5, "encoder_from": "trained"})
    seconds = pretrain_seconds(["imported", "trained"], tmp_path / "r" / "runs")
    assert seconds.isna()["imported"] and seconds["trained"] == 12.5


def classifier(name, dataset="cifar10", threat_model="Linf", model_dir=None):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.e2e
def test_a_robustbench_model_is_one_run_whose_one_scheme_evaluates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "ROBUSTBENCH_DATASETS", ("digits",))  # no CIFAR offline: the tiny digits
    monkeypatch.setattr(external, "load_robustbench_model", classifier)
    plan = imported_plan(
        request(tmp_path, **{"data.image_size": "32"}),
        checkpoint=None,
        checkpoint_format="bench",
        branch=None,
        name=None,
        robustbench_model="Fake",
    )
    (run,) = plan.runs
    assert run.identity["file"] == "Fake" and run.identity["config"]["finetune"]["schemes"] == ["SLF"]
    assert run.run_id == f"robustbench-Fake-external-s0-{config_hash(run.identity)}"
    assert [outcome.status for outcome in run_plan(plan)] == ["completed"]
    run_dir = ResultsStore(tmp_path / "r").run(run.run_id)
    assert {row.scheme for row in run_dir.read_rows()} == {"AT"} and run_dir.sanity("AT").exists()
    assert json.loads(run_dir.config.read_text())["schemes"] == ["AT"]
