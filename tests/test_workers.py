"""One run per GPU: the job count on CUDA, one device per worker slot, and the spawned-worker path
(what CUDA uses) exercised on CPU with a forced spawn context, with the store's guarantees."""

from __future__ import annotations

import pytest
import torch

from bench.config import ConfigError
from bench.runs import pipeline
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore


def test_cuda_runs_one_method_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cuda = torch.device("cuda")
    assert pipeline.resolve_jobs(0, cuda, runs=13) == 4  # auto: every GPU
    assert pipeline.resolve_jobs(0, cuda, runs=2) == 2
    assert pipeline.resolve_jobs(1, cuda, runs=13) == 1
    with pytest.raises(ConfigError, match="jobs=5 is invalid on this machine: allowed 0 \\(auto\\) to 4"):
        pipeline.resolve_jobs(5, cuda, runs=13)
    assert pipeline.worker_devices(cuda, 3) == [torch.device("cuda", i) for i in range(3)]
    assert pipeline.worker_devices(torch.device("cpu"), 2) == [torch.device("cpu")] * 2


@pytest.mark.slow
@pytest.mark.e2e
def test_spawned_workers_run_each_method_and_store_its_rows(tmp_path):
    overrides = {
        "device": "cpu",
        "results_dir": str(tmp_path / "r"),
        "reports_dir": str(tmp_path / "rep"),
        "pretrain.epochs": "1",
        "pretrain.batch_size": "256",
        "finetune.epochs": "1",
        "finetune.milestones": "1",
        "finetune.schemes": "SLF",
        "evaluate.n_eval": "16",
        "evaluate.attacks": "clean",
        "evaluate.sanity": "false",
        "evaluate.epsilon_curve": "",
        "evaluate.corruptions": "none",
        "attack.steps": "1",  # what is tested is the spawned workers and the store, not the runs' numbers
        "data.image_size": "8",
    }
    plan = build_plan(RunRequest(methods=("simclr", "acl"), overrides=overrides))
    store = ResultsStore(plan.results_dir)
    outcomes = pipeline.run_in_workers(plan, store, torch.device("cpu"), jobs=2, start_method="spawn")
    assert [outcome.status for outcome in outcomes] == ["completed", "completed"]
    assert [outcome.run_id for outcome in outcomes] == [run.run_id for run in plan.runs]
    for run in plan.runs:
        run_dir = store.run(run.run_id)
        assert run_dir.is_complete() and run_dir.read_rows()
    assert {row.method for row in store.read_rows()} == {"simclr", "acl"}  # results.csv, rebuilt by collect
