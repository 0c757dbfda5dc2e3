"""Probes of the second reliability review (``../shared/reviews/reliability-2.md``) on the launchers:
D7 (killed sweeps and torchrun leave no process behind, a killed peer rank resumes), D10 (an
interrupted ``--jobs 2`` prints one line), D12 (resume in finetuning at the interrupted thread count),
D17 (one process-group lifetime). Each test replays the review's repro at the smallest size that still
shows the defect; the ones that start ``bench`` processes are marked e2e.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import (
    CHILD_ENVIRONMENT,
    LINUX,
    REPO,
    ForkedBench,
    all_gone,
    descendants,
    kill_left,
    two_jobs_run,
    wait_until,
    workers,
)
from processes import bench as bench_process
from tiny_run import TINY_PRETRAINING

# --------------------------------------------------------------------------- D10


@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc and pgrep to find the workers")
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupting_two_jobs_prints_one_line_and_leaves_no_worker(tmp_path, stop):
    """D10: Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) or ``kill <main pid>``
    of ``bench run --jobs 2`` printed ~100 lines of worker tracebacks. Workers ignore SIGINT and die
    quietly on their parent's SIGTERM now: one line, exit 130, every worker gone. Ctrl-C in a new interpreter,
    its exit included, as a user sees it; SIGTERM forked (``ForkedBench``: about 4 s of CPU less)."""
    process = two_jobs_run(tmp_path, start=bench_process if stop == "ctrl-c" else ForkedBench)
    try:
        started = workers(process)
        time.sleep(1.0)  # inside training, not at start-up
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:  # a failure here must not leave 200 epochs training beside the rest of the suite
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = err.decode(errors="replace").strip().splitlines()
    assert process.returncode == 130 and len(lines) <= 2, lines
    assert "interrupted" in lines[-1] and not any("Traceback" in line for line in lines)
    assert all_gone(started)


# --------------------------------------------------------------------------- D7: submitit-local sweeps (the killed
# launchers themselves: tests/test_sweep.py, test_a_local_sweep_killed_preempted_stopped_and_rerun_...)


def _run_dir(results: Path) -> Path | None:
    runs = sorted((results / "runs").glob("acl-*")) if (results / "runs").exists() else []
    return runs[0] if runs else None


def _training(results: Path) -> bool:
    """The sweep's pretraining job has written its first checkpoint (it is mid-training)."""
    run = _run_dir(results)
    return run is not None and (run / "pretrain.ckpt").exists()


@pytest.mark.e2e  # spawns processes
def test_a_stage_lock_waits_for_a_live_holder_and_never_for_a_dead_one(tmp_path):
    """D7, the rerun: a second job of the same (run, stage) waits while the first holds the lock and
    gets it the moment the holder dies, even by SIGKILL (the kernel drops an ``flock``)."""
    from bench.runs.stage_command import stage_lock
    from bench.store.results import ResultsStore

    store = ResultsStore(tmp_path)
    path = tmp_path / ".locks" / "acl-x.stage-pretrain.lock"
    code = (
        "import time; from pathlib import Path; from bench.engine.lifetime import exclusive\n"
        f"with exclusive(Path({str(path)!r})):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        waited: list[str] = []
        entered = threading.Event()

        def second() -> None:
            with stage_lock(store, "acl-x", "pretrain"):
                entered.set()

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bench.engine.progress.log", waited.append)
            thread = threading.Thread(target=second, daemon=True)
            thread.start()
            assert not entered.wait(1.0)  # the holder is alive: the second job waits
            holder.kill()
            assert entered.wait(10.0)  # the holder died: no stale lock
            thread.join(5)
        assert len(waited) == 1 and f"pid {holder.pid}" in waited[0] and "waiting" in waited[0]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.e2e  # spawns processes
def test_a_job_ends_itself_when_its_launcher_is_gone(tmp_path):
    """D7, ``kill -9``: a job's parent is submitit's controller, not the sweep; the watchdog on the
    sweep's pid ends the job within moments of the sweep's death, with one line saying why."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code = (
        "import sys, time; from bench.engine.lifetime import exit_when_gone\n"
        f"exit_when_gone({launcher.pid}, 'launcher gone: job stopped')\n"
        "print('watching', flush=True); time.sleep(60); sys.exit(0)"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert job.stdout.readline().strip() == b"watching"
        launcher.kill()
        launcher.wait()
        job.wait(timeout=10)
        assert job.returncode == 1 and job.stderr.read().decode().strip() == "bench: launcher gone: job stopped"
    finally:
        for process in (launcher, job):
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- D12


@pytest.mark.e2e
def test_a_run_killed_in_finetuning_resumes_bit_exactly_at_its_thread_count(tmp_path, monkeypatch):
    """D12: killed in finetuning under ``--jobs 2`` (one thread per worker), resumed alone (two threads):
    the classifier differed (2/24 tensors, <= 3e-7), since only ``pretrain.ckpt`` restored the thread
    count. ``pretrain.json`` records the run's count now and a resumed finetuning uses it."""
    import torch
    from tiny_run import TINY

    from bench.cli.app import main
    from bench.runs import stages
    from bench.store.results import ResultsStore

    def bench(store: str, *extra: str) -> int:
        return main(
            ["run", "--methods", "simclr", *TINY, "--no-report", "--results-dir", str(tmp_path / store), *extra]
        )

    threads = torch.get_num_threads()
    original = stages.finetune_and_evaluate_scheme
    seen: list[int] = []

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the kill, as the worker's process sees it

    def watched(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    try:
        torch.set_num_threads(1)
        assert bench("reference") == 0
        monkeypatch.setattr(stages, "finetune_and_evaluate_scheme", killed)
        assert bench("killed") == 130
        torch.set_num_threads(2)  # resumed alone: the machine's count
        monkeypatch.setattr(stages, "finetune_and_evaluate_scheme", watched)
        assert bench("killed", "--resume") == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]  # the interrupted run's count, from pretrain.json
    (reference,) = ResultsStore(tmp_path / "reference").run_dirs()
    (resumed,) = ResultsStore(tmp_path / "killed").run_dirs()
    ours, theirs = (torch.load(run.classifier("SLF"), weights_only=True)["state"] for run in (reference, resumed))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


# --------------------------------------------------------------------------- D7 and D17 under torchrun


def _pretrain(results: Path, *extra: str) -> list[str]:
    """``bench pretrain`` of acl on the CPU, a checkpoint every step: what each rank runs."""
    # TINY_PRETRAINING (one PGD step at 8 px): the launches, kills and resumes are tested, not the attack
    return [
        "pretrain", "--methods", "acl", "--device", "cpu", "--set", "pretrain.batch_size=256",
        "--set", "pretrain.checkpoint_every=1", *TINY_PRETRAINING, "--results-dir", str(results), *extra,
    ]  # fmt: skip


def _torchrun(results: Path, *extra: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m bench.cli pretrain`` (acl, CPU, gloo) in its own session."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bench.cli",
        *_pretrain(results, *extra),
    ]  # fmt: skip
    environment = {**os.environ, **CHILD_ENVIRONMENT}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _ranks(torchrun: int) -> dict[int, int]:
    """rank → pid of the bench processes torchrun started (read from their environment)."""
    ranks = {}
    for pid in descendants(torchrun):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in values and b"bench.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
            ranks[int(values[b"RANK"])] = pid
    return ranks


EPOCHS = "5"  # 25 steps: a launch stopped at its first checkpoint leaves ~20 to go
ONE_PROCESS = {  # the settings of _pretrain's run in one process with a shard per rank: its run id is the ranks'
    "device": "cpu", "pretrain.epochs": EPOCHS, "pretrain.batch_size": "256", "pretrain.shards": "2",
    "pretrain.checkpoint_every": "1", "attack.steps": "1", "data.image_size": "8", "finetune.schemes": "",
}  # fmt: skip


def _forked_ranks(results: Path, *extra: str) -> list[ForkedBench]:
    """Ranks 0 and 1 of ``bench pretrain`` forked with the environment torchrun gives its ranks, without torchrun
    (its rendezvous: rank 0's store on a free port). Each torchrun launch costs three new interpreters (torch in
    the launcher and both ranks, about 5 s of CPU each); what runs under torchrun itself: the next test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    return [
        ForkedBench(
            *_pretrain(results, "--epochs", EPOCHS, *extra), environment={**world, "RANK": rank, "LOCAL_RANK": rank}
        )
        for rank in ("0", "1")
    ]


@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc to follow the ranks")
def test_a_rank_killed_mid_pretraining_resumes_to_the_run_of_one_process_with_world_size_shards(tmp_path):
    """D7, a peer lost: rank 1 killed mid-pretraining. Rank 0's collective failed (gloo: ``Connection closed by
    peer``) and recorded ``resumable: false``, so ``--resume`` started again from step 0. A failed collective is
    ``PeerLost`` now, recorded resumable, and ``--resume`` continues from the last checkpoint to the end: the run
    id is that of ``--set pretrain.shards=2`` in one process; the encoder, history and tracker are written by
    rank 0 alone, every step once.

    Forked ranks (``_forked_ranks``): under torchrun its agent stops rank 0 as soon as rank 1 dies, often before
    rank 0's collective fails, so there this failure showed only now and then."""
    from bench.runs.plan import RunRequest, build_plan
    from bench.runs.tracking import read_local

    results = tmp_path / "r"
    ranks = _forked_ranks(results)
    try:
        wait_until(lambda: _training(results), 240, "the first checkpoint")
        ranks[1].kill()
        _, err = ranks[0].communicate(timeout=120)
    finally:
        kill_left([rank.pid for rank in ranks if rank.poll() is None])
        for rank in ranks:
            rank.wait()
    assert ranks[0].returncode == 1, err.decode(errors="replace")[-3000:]
    run = _run_dir(results)
    failed = json.loads((run / "failed.json").read_text())
    assert failed["resumable"] is True and "another rank is gone" in failed["reason"], failed

    resumed = _forked_ranks(results, "--resume")
    try:
        outputs = [rank.communicate(timeout=600) for rank in resumed]
    finally:
        kill_left([rank.pid for rank in resumed if rank.poll() is None])
    text = "".join(stream.decode(errors="replace") for stream in outputs[0])
    assert [rank.returncode for rank in resumed] == [0, 0], text[-3000:]
    (step,) = [int(line.split("from step ")[1].split("/")[0]) for line in text.splitlines() if "resumed acl" in line]
    total = int(EPOCHS) * (1438 // 256)
    assert 0 < step < total and (run / "done.json").exists() and (run / "encoder.pt").exists()
    steps = [line.split(",")[1] for line in (run / "pretrain_history.csv").read_text().splitlines()[1:]]
    assert steps == [str(index) for index in range(total)]
    (expected,) = build_plan(RunRequest(methods=("acl",), overrides=ONE_PROCESS)).runs
    assert sorted(path.name for path in (results / "runs").iterdir()) == [expected.run_id]
    # the local tracker: rank 0 alone logs each step, once (both ranks would log each twice). It is append-only
    # and the killed launch may have logged a step after its last checkpoint, so only the last launch's lines,
    # from its checkpoint on, are each step once; every step is there
    logged = [line["step"] for line in read_local(run / "metrics.jsonl")]
    assert logged[len(logged) - (total - step) :] == list(range(step, total)) and set(logged) == set(range(total))


@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc to find the ranks")
def test_torchrun_ranks_end_with_a_killed_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 bench pretrain`` (CPU, gloo) to its first checkpoint: the ranks join, train
    and write the run of one process with world-size shards. D7, the launcher lost: torchrun starts its ranks in
    sessions of their own, so ``kill -9`` of torchrun orphaned both (they trained on). Each rank asks for a
    parent-death signal when it joins the job. (Killed ranks and the resume: the test above.)"""
    from bench.runs.plan import RunRequest, build_plan

    results = tmp_path / "r"
    launcher, ranks = _torchrun(results, "--epochs", EPOCHS), {}
    try:  # its ranks, found before the kill: once torchrun is gone, orphans have no parent to find them by
        ranks = wait_until(lambda: len(_ranks(launcher.pid)) == 2 and _ranks(launcher.pid), 240, "both ranks")
        wait_until(lambda: _training(results), 240, "the first checkpoint")
        launcher.kill()
        launcher.wait(timeout=60)  # not communicate(): orphaned ranks would hold its pipes open
        assert all_gone(list(ranks.values()), 20), "ranks still running after kill -9 of torchrun"
    finally:
        kill_left([*([launcher.pid] if launcher.poll() is None else []), *ranks.values()])
    (expected,) = build_plan(RunRequest(methods=("acl",), overrides=ONE_PROCESS)).runs
    assert sorted(path.name for path in (results / "runs").iterdir()) == [expected.run_id]


def test_the_process_group_lives_once_barrier_on_success_destroyed_exactly_once(monkeypatch):
    """D17: the groups were never destroyed; at the interpreter's exit gloo's threads were torn down
    still joinable and rank 0 aborted (``terminate called without an active exception``) once in four
    runs. ``collective.session`` joins once, and on the way out: a barrier when the block finished,
    ``destroy_process_group`` exactly once however it ended, nothing on a second close."""
    from bench.engine import collective

    calls: list[str] = []
    job = collective.Collective(world=2, rank=0, group=None, control=None)

    def join(device: str):
        calls.append("init")
        collective.attach(job)
        return job

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(collective, "init_from_env", join)
    monkeypatch.setattr(collective.lifetime, "die_with_parent", lambda **marks: calls.append("death-signal"))
    monkeypatch.setattr(collective.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(collective.dist, "barrier", lambda group=None: calls.append("barrier"))
    monkeypatch.setattr(collective.dist, "destroy_process_group", lambda: calls.append("destroy"))
    with collective.session("cpu") as joined:
        assert joined is job and collective.active() is job
    assert calls == ["death-signal", "init", "barrier", "destroy"] and collective.active() is None
    calls.clear()
    with pytest.raises(collective.DistributedRunFailed), collective.session("cpu"):
        raise collective.DistributedRunFailed("rank 1: lost")
    assert calls == ["death-signal", "init", "destroy"]  # no barrier: a peer may be gone
    calls.clear()
    collective.close()
    assert calls == []


def test_a_failed_collective_is_a_lost_peer_and_the_run_is_recorded_resumable(tmp_path, monkeypatch):
    """D7: what rank 0 sees when its peer is killed (gloo's RuntimeError) is ``PeerLost``, and the run's
    failure is marked resumable (``--resume`` continues it); a failure of the run's own stays not resumable."""
    import torch

    from bench.engine import collective
    from bench.methodkit.method import Method
    from bench.runs import train
    from bench.store.results import RunDir

    def lost(*args, **kwargs):
        raise RuntimeError("[/__w/gloo/transport/tcp/pair.cc:545] Connection closed by peer [127.0.0.1]:1234")

    monkeypatch.setattr(collective.dist, "all_reduce", lost)
    job = collective.Collective(world=2, rank=0, group=None, control=None)
    with pytest.raises(collective.PeerLost, match="another rank is gone"):
        job.mean(torch.ones(1))
    run_dir = RunDir(tmp_path / "acl-x")

    def failing(error):
        def run(*args, **kwargs):
            raise error

        return run

    monkeypatch.setattr(collective, "active", lambda: job)
    monkeypatch.setattr(job, "broadcast_object", lambda value=None: value)
    monkeypatch.setattr(collective, "check_shards", lambda *args: "per-shard")
    for error, resumable in ((collective.PeerLost("a collective failed"), True), (ValueError("own bug"), False)):
        monkeypatch.setattr(train, "_pretrain", failing(error))
        with pytest.raises(collective.DistributedRunFailed):
            train.pretrain(Method(), None, None, _Config(), run_dir, torch.device("cpu"))
        assert run_dir.failure_is_resumable() is resumable


class _Config:
    class pretrain:  # noqa: N801 - stands in for RunConfig.pretrain
        shards, compile, compile_attack = 2, False, False


@pytest.mark.e2e  # spawns processes
@pytest.mark.skipif(not LINUX, reason="the parent-death signal is Linux's")
def test_a_rank_whose_torchrun_died_while_it_started_kills_itself(tmp_path):
    """D7, found by the soak: torchrun killed while its ranks were still importing; the ranks, handed
    to init before they asked for the death signal, waited in the rendezvous. A process adopted by an
    init that is not its launcher now counts its launcher as gone."""
    code = (
        "import os, subprocess, sys\n"
        "child = ('import os, sys, time; time.sleep(1.5); print(os.getppid(), flush=True); '\n"
        "         'from bench.engine.lifetime import die_with_parent; '\n"
        '         \'die_with_parent(launcher_marks=(b"torchrun",)); print("survived", flush=True)\')\n'
        "subprocess.Popen([sys.executable, '-c', child])\n"  # the parent exits at once: the child is orphaned
    )
    out = subprocess.run(  # reads until the orphan, which holds the pipe too, has exited
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60
    )
    lines = out.stdout.decode().split()
    if lines[:1] != ["1"]:
        pytest.skip(f"orphans go to a subreaper here (pid {lines[:1]}), not init")
    assert lines == ["1"], out.stderr.decode()[-1000:]  # killed before it could say it survived
