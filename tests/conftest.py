"""Shared fixtures: tiny configs on the embedded digits, so tests run in seconds on a CPU."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from bench.config import RunConfig, smoke_preset
from bench.engine.data import load_digits


@pytest.fixture(scope="session")
def digits():
    return load_digits(16)


@pytest.fixture
def tiny_config(tmp_path) -> RunConfig:
    config = smoke_preset()
    config.pretrain.epochs = 1
    config.pretrain.batch_size = 32
    config.pretrain.checkpoint_every = 5
    config.attack.steps = 2
    config.finetune.epochs = 1
    config.finetune.milestones = (1,)
    config.evaluate.n_eval = 32
    config.evaluate.attacks = ("clean", "pgd20")
    config.results_dir = str(tmp_path / "results")
    config.reports_dir = str(tmp_path / "reports")
    config.device = "cpu"
    return config


# Two threads, as CI's two cores; one per worker under pytest-xdist (-n 2), so workers do not oversubscribe.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """``shared_run(*argv)``: the store of ``bench run *argv`` made once per test session and shared by every
    test and pytest-xdist worker that asks for the same argv (a file lock in the session's common temp folder).

    Many end-to-end tests start from the same tiny run; making it once is most of what keeps the suite
    within its time. The returned folder (``r/`` results, ``rep/`` reports) is read-only by contract:
    a test that writes copies it first (``tiny_run.copy_store``)."""
    from filelock import FileLock

    from bench.cli.app import main

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)

    def make(*argv: str):
        key = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
        target = root / key
        with FileLock(str(root / f"{key}.lock")):
            if not (target / "made").exists():
                shutil.rmtree(target, ignore_errors=True)
                dirs = ["--results-dir", str(target / "r"), "--reports-dir", str(target / "rep")]
                assert main(["run", *argv, *dirs]) == 0, argv
                (target / "made").touch()
        return target

    return make
