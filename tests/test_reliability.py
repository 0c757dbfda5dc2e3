"""Failure paths: nothing wrong is stored, no finished work is lost, no stored file runs code.

Each test is a reproduction from the reliability review (issue 15), run on the tiny smoke settings.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from processes import LINUX, all_gone, kill_left, two_jobs_run, workers
from tiny_run import TINY, copy_store

from bench.cli.app import main
from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.store.results import ResultsStore


def _bench(tmp_path, *args):  # no test here reads a report
    return main(["run", "--results-dir", str(tmp_path / "r"), "--no-report", *TINY, *args])


def _store(tmp_path) -> ResultsStore:
    return ResultsStore(tmp_path / "r")


@pytest.mark.e2e
def test_diverged_finetuning_fails_the_run_and_stores_nothing(tmp_path, capsys):
    assert _bench(tmp_path, "--methods", "simclr", "--jobs", "1", "--set", "finetune.lr=1e12") == 1
    (run,) = _store(tmp_path).run_dirs()
    assert not run.is_complete() and "finetuning" in run.failure()
    assert "failed: FloatingPointError: SLF finetuning" in capsys.readouterr().err
    assert _store(tmp_path).read_rows() == []


def test_a_constant_classifier_fails_the_degenerate_check():
    from bench.config import EvalConfig
    from bench.evaluation.evaluate import evaluate_classifier

    class Constant(torch.nn.Module):
        def forward(self, x):
            return 0 * x.flatten(1)[:, :3] + torch.tensor([0.0, 1.0, 0.0])  # class 1, whatever the input

    x, y = torch.rand(9, 3, 4, 4), torch.arange(9) % 3
    report = evaluate_classifier(Constant(), x, y, EvalConfig(epsilon=0.0, step_size=0.0, attacks=("clean",)), "cpu")
    assert report.sanity["degenerate"][0] is False and "suspect:degenerate" in report.flags


@pytest.mark.e2e
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_one_failing_method_keeps_the_others_results(tmp_path, capsys, jobs):
    code = _bench(tmp_path, "--methods", "acl-ip", "simclr", "--jobs", jobs, "--param", "acl-ip:adv_weight=1e39")
    assert code == 1
    store = _store(tmp_path)
    assert {row.method for row in store.read_rows()} == {"simclr"}
    failed = [run for run in store.run_dirs() if run.failure()]
    assert [run.run_id.split("-s0")[0] for run in failed] == ["acl-ip-smoke-digits"]
    err = capsys.readouterr().err
    assert "(acl-ip) failed: FloatingPointError: acl-ip: loss became" in err


class _Killed(Method):
    description = "test method whose process dies at its first step"

    def training_step(self, model, images, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.e2e
def test_a_killed_worker_is_a_failed_run_and_the_other_finishes(tmp_path):
    registry.register("killed-test")(_Killed)
    try:
        assert _bench(tmp_path, "--methods", "killed-test", "simclr", "--jobs", "2") == 1
    finally:
        registry.unregister("killed-test")
    store = _store(tmp_path)
    assert {row.method for row in store.read_rows()} == {"simclr"}
    (failed,) = [run for run in store.run_dirs() if run.failure()]
    assert "killed by signal 9" in failed.failure()


@pytest.mark.e2e
def test_a_failed_run_is_started_afresh_and_then_completes(tmp_path):
    assert _bench(tmp_path, "--methods", "simclr", "--jobs", "1", "--set", "finetune.lr=1e12") == 1
    assert _bench(tmp_path, "--methods", "simclr", "--jobs", "1", "--set", "finetune.lr=1e12", "--resume") == 1
    assert _bench(tmp_path, "--methods", "simclr", "--jobs", "1") == 0
    assert {row.method for row in _store(tmp_path).read_rows()} == {"simclr"}


@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc and pgrep to find the workers")
def test_workers_die_with_their_killed_parent(tmp_path):
    """``kill -9`` of ``bench run --jobs 2``: no handler runs, and each worker ends by its parent-death signal.
    (SIGTERM and Ctrl-C of the same run: tests/test_reliability_launch.py, D10.)"""
    process, started = two_jobs_run(tmp_path), []
    try:
        started = workers(process)  # kept: once their parent is gone, orphans have no parent to find them by
        process.kill()
        process.wait()
        assert all_gone(started), "orphaned workers kept running"
    finally:
        kill_left([*([process.pid] if process.poll() is None else []), *started])


class _Pwned:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PWNED_MARK']}",))


def _plant(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Pwned()}, path)


@pytest.mark.e2e
def test_planted_pickles_in_the_store_never_run(tmp_path, monkeypatch, capsys, shared_run):
    mark = tmp_path / "PWNED"
    monkeypatch.setenv("PWNED_MARK", str(mark))
    copy_store(shared_run("--methods", "acl", *TINY), tmp_path)  # = _bench(tmp_path, "--methods", "acl")
    store = _store(tmp_path)
    (run,) = store.run_dirs()
    _plant(run.classifier("SLF"))  # bench export
    assert (
        main(
            [
                "export",
                run.run_id,
                "--scheme",
                "SLF",
                "--out",
                str(tmp_path / "x.pt"),
                "--results-dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "could not be read with torch.load(weights_only=True)" in capsys.readouterr().err
    _plant(run.encoder)  # encoder reuse by a run with other evaluation settings: skipped, pretrains itself
    assert _bench(tmp_path, "--methods", "acl", "--jobs", "1", "--epsilon", "0.05") == 0
    other = next(other for other in store.run_dirs() if other.run_id != run.run_id).run_id
    assert json.loads(store.run(other).done.read_text())["encoder_from"] == other
    _plant(store.run(other).checkpoint)  # --resume of a run interrupted while pretraining
    store.run(other).done.unlink()
    store.run(other).pretrain_summary.unlink()  # the pretraining stage had not finished
    assert _bench(tmp_path, "--methods", "acl", "--jobs", "1", "--epsilon", "0.05", "--resume") == 1
    assert "cannot be read" in store.run(other).failure()
    assert not mark.exists()


def test_a_parameter_scope_that_names_no_selected_method_is_refused(tmp_path, capsys):
    code = _bench(tmp_path, "--methods", "acl", "--param", "aclip:alpha=0.3")
    assert code == 2 and "scope 'aclip' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flag",
    [
        ["--epsilon", "nan"],
        ["--step-size", "nan"],
        ["--lr", "inf"],
        ["--lr", "1e400"],
        ["--set", "pretrain.momentum=nan"],
        ["--set", "pretrain.weight_decay=-1"],
        ["--set", "evaluate.batch_size=-1"],
        ["--set", "pretrain.warmup_epochs=-3"],
        ["--set", "results_dir="],
        ["--image-size", "100000"],
    ],
)
def test_non_finite_and_out_of_range_values_are_refused_before_any_write(tmp_path, capsys, flag):
    code = main(["run", "--methods", "acl", "--results-dir", str(tmp_path / "r"), "--quiet", *flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is invalid" in err, err
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["run", "--methods", "acl", "--device", "cuda", "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "device='cuda' is invalid" in err


@pytest.mark.e2e
def test_status_and_collect_merge_with_conflicts(tmp_path, capsys, shared_run):
    copy_store(shared_run("--methods", "simclr", *TINY), tmp_path / "a")  # = _bench(tmp_path / "a", ...simclr)
    assert _bench(tmp_path / "b", "--methods", "simclr", "--jobs", "1", "--seed", "1") == 0
    assert _bench(tmp_path / "b", "--methods", "simclr", "--jobs", "1", "--set", "finetune.lr=1e12") == 1
    capsys.readouterr()
    assert main(["status", "--results-dir", str(tmp_path / "b" / "r"), "--json"]) == 0
    states = sorted(json.loads(line)["state"] for line in capsys.readouterr().out.splitlines())
    assert states == ["complete", "failed"]
    merged = tmp_path / "merged"
    for _ in range(2):  # the second merge copies nothing and changes no byte
        assert (
            main(
                [
                    "collect",
                    "--results-dir",
                    str(merged),
                    "--from",
                    str(tmp_path / "a" / "r"),
                    str(tmp_path / "b" / "r"),
                    "--quiet",
                ]
            )
            == 0
        )
    index = (merged / "results.csv").read_bytes()
    rows = ResultsStore(merged).read_rows()
    assert {row.seed for row in rows} == {0, 1} and len(rows) == 2 * len(_store(tmp_path / "a").read_rows())
    conflicting = ResultsStore(tmp_path / "a" / "r").run_dirs()[0]
    text = conflicting.rows.read_text().splitlines()
    text[1] = text[1].replace(",accuracy,", ",accuracy,1", 1)  # another value for the same run id
    conflicting.rows.write_text("\n".join(text) + "\n")
    code = main(["collect", "--results-dir", str(merged), "--from", str(tmp_path / "a" / "r"), "--quiet"])
    assert code == 1 and "conflicting run" in capsys.readouterr().err
    assert (merged / "results.csv").read_bytes() == index


@pytest.mark.e2e
def test_resume_restores_the_thread_count_of_the_interrupted_run(digits, tiny_config, tmp_path):
    from bench.runs.train import pretrain
    from bench.store.results import RunDir

    def train(run_dir, threads, crash_at=None, resume=False):
        torch.set_num_threads(threads)
        cls = registry.get("simclr")
        method = cls(cls.make_params({}))
        torch.manual_seed(0)
        model = method.build_model("small_cnn")
        if crash_at is not None:
            step = method.training_step

            def crashing(model_, images, ctx):
                if ctx.step == crash_at:
                    raise KeyboardInterrupt
                return step(model_, images, ctx)

            method.training_step = crashing
        pretrain(method, model, digits.x_train[:512], tiny_config, RunDir(run_dir), torch.device("cpu"), resume=resume)
        return model

    tiny_config.pretrain.epochs = 2
    reference = train(tmp_path / "full", 1)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "killed", 1, crash_at=22)
    resumed = train(tmp_path / "killed", 2, resume=True)
    assert torch.get_num_threads() == 1  # the interrupted run's count, restored
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
