"""Shared fixtures: tiny configs on the embedded digits, so tests run in seconds on a CPU."""

from __future__ import annotations

import os

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
