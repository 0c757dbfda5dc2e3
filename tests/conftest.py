"""Shared fixtures: tiny configs on the embedded digits, so tests run in seconds on a CPU."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

# torch and the package are imported by the fixtures that use them, not here: pytest-xdist's controller loads
# this file too and runs no test (importing torch there cost each suite run 3 to 4 s of CPU at its start)


@pytest.fixture(scope="session")
def digits():
    from bench.engine.data import load_digits

    return load_digits(16)


@pytest.fixture
def tiny_config(tmp_path):
    from bench.config import smoke_preset

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
    import torch

    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory):
    """``shared_folder(key, make)``: a folder that ``make(folder)`` fills once per test session, shared by every
    test and pytest-xdist worker that asks for the same key (a file lock in the session's common temp folder).

    A module fixture runs once per worker that runs a test of its module, and pytest-xdist's work stealing
    often splits a module between both: an expensive one belongs here instead. The folder is read-only by
    contract: a test that writes copies it first (``tiny_run.copy_store``)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
    root.mkdir(exist_ok=True)

    def folder(key: str, make) -> Path:
        target = root / key
        lock = FileLock(str(root / f"{key}.lock"), timeout=600)  # a maker that hangs fails its waiters, not the suite
        with lock:
            if not (target / "made").exists():
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                make(target)
                (target / "made").touch()
        return target

    return folder


@pytest.fixture(scope="session")
def shared_run(shared_folder):
    """``shared_run(*argv)``: the store of ``bench run *argv`` (``r/`` results, ``rep/`` reports), made once per
    test session (``shared_folder``). Many end-to-end tests start from the same tiny run; making it once is most
    of what keeps the suite within its time."""
    from bench.cli.app import main

    def run(folder: Path, argv: tuple[str, ...]) -> None:
        dirs = ["--results-dir", str(folder / "r"), "--reports-dir", str(folder / "rep")]
        assert main(["run", *argv, *dirs]) == 0, argv

    def make(*argv: str) -> Path:
        key = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
        return shared_folder(key, lambda folder: run(folder, argv))

    return make


# The longest tests (seconds on 2 cores, ``--durations``), longest first. pytest-xdist's work stealing gives each
# worker a contiguous share of the collection and steals from the end of a share: each share starts with its
# part of these, so no worker is left to run a minute-long test alone at the end of the suite.
LONGEST = (
    "test_a_local_sweep_killed_preempted_stopped_and_rerun_gives_the_rows_of_bench_run",
    "test_the_page_loads_sorts_and_filters_in_chromium",
    "test_torchrun_ranks_end_with_a_killed_torchrun",
    "test_autoattack_standard_on_a_few_samples",
    "test_a_rank_killed_mid_pretraining_resumes_to_the_run_of_one_process_with_world_size_shards",
    "test_a_tiny_real_study_through_the_local_pool_and_the_sweep_s_stage_jobs",
    "test_a_spawned_worker_runs_its_method_and_stores_its_rows",
    "test_precision_check_runs_both_arms_on_cpu",
    "test_parallel_and_sequential_runs_store_the_same_runs",
    "test_run_stores_every_scheme_and_attack",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST)}

    def name(item) -> str:
        return getattr(item, "originalname", item.name)  # a doctest item has no originalname

    longest = sorted((item for item in items if name(item) in rank), key=lambda item: rank[name(item)])
    others = [item for item in items if name(item) not in rank]
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    share = -(-len(others) // workers)
    items[:] = [
        item
        for worker in range(workers)
        for item in (*longest[worker::workers], *others[worker * share : (worker + 1) * share])
    ]
