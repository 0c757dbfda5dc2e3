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
def test_a_spawned_worker_runs_its_method_and_stores_its_rows(tmp_path):
    """The spawn start method (CUDA's): the run and its plan pickled into a fresh interpreter. One run, one
    worker: each spawned process imports torch and the suite anew (about 7 s of CPU); several workers at once,
    their order and a killed one are tested on forked workers (tests/test_pipeline.py, tests/test_reliability.py)."""
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
    plan = build_plan(RunRequest(methods=("acl",), overrides=overrides))  # dual BN: the most state to pickle
    store = ResultsStore(plan.results_dir)
    (outcome,) = pipeline.run_in_workers(plan, store, torch.device("cpu"), jobs=2, start_method="spawn")
    (run,) = plan.runs
    assert outcome.status == "completed" and outcome.run_id == run.run_id
    assert store.run(run.run_id).is_complete() and store.run(run.run_id).read_rows()
    assert {row.method for row in store.read_rows()} == {"acl"}  # results.csv, rebuilt by collect
