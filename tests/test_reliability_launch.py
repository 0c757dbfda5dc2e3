"""Probes of the second reliability review (``../shared/reviews/reliability-2.md``) on the launchers:
D7 (killed sweeps and torchrun leave no process behind, a killed peer rank resumes), D10 (an
interrupted ``--jobs 2`` prints one line), D12 (resume in finetuning at the interrupted thread count),
D17 (one process-group lifetime). Each test replays the review's repro at the smallest size that still
shows the defect; the ones that start ``bench`` processes are marked e2e.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.engine import lifetime

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux") and Path("/proc").exists()


def _as_from_a_terminal() -> None:
    """In the child before ``exec``: SIGINT and SIGQUIT at their defaults, as a shell starts a command. The
    test process may hold them ignored at that moment (C ``system()``, called by a library's thread, ignores
    both in its caller while its own child runs) and a child inherits an ignored signal: ``bench`` would then
    never see the Ctrl-C these tests send, and its workers would train on (seen in CI: 60 s timeouts and
    orphans that slowed every later test)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _bench(*args: str, **popen) -> subprocess.Popen:
    """``bench ARGS`` in a session of its own (its process group is its pid), stdout and stderr piped."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
        **popen,
    )


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, …)."""
    found, queue = [], [pid]
    while queue:
        children = subprocess.run(["pgrep", "-P", str(queue.pop())], capture_output=True, text=True).stdout.split()
        found += [int(child) for child in children]
        queue += [int(child) for child in children]
    return [child for child in found if lifetime.process_alive(child)]


def _wait_until(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _all_gone(pids: list[int], timeout_s: float = 20) -> bool:
    try:
        _wait_until(lambda: not any(lifetime.process_alive(pid) for pid in pids), timeout_s, "the processes to end")
    except AssertionError:
        return False
    return True


def _kill_left(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- D10


@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc and pgrep to find the workers")
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupting_two_jobs_prints_one_line_and_leaves_no_worker(tmp_path, stop):
    """D10: Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) or ``kill <main pid>``
    of ``bench run --jobs 2`` printed ~100 lines of worker tracebacks. Workers ignore SIGINT and die
    quietly on their parent's SIGTERM now: one line, exit 130, every worker gone."""
    process = _bench(
        "run", "--methods", "acl", "simclr", "--jobs", "2", "--epochs", "200", "--device", "cpu", "--quiet",
        "--no-report", "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep"),
    )  # fmt: skip
    try:
        workers = _wait_until(lambda: len(_descendants(process.pid)) >= 2 and _descendants(process.pid), 120, "workers")
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
    assert _all_gone(workers)


# --------------------------------------------------------------------------- D7: submitit-local sweeps

SWEEP_TINY = [
    "--launcher", "submitit-local", "--methods", "acl", "--epochs", "3", "--finetune-epochs", "1",
    "--n-eval", "16", "--schemes", "SLF", "--attacks", "clean,pgd20", "--set", "evaluate.epsilon_curve=",
    "--set", "pretrain.batch_size=256", "--set", "pretrain.checkpoint_every=1", "--device", "cpu",
    "--quiet", "--no-report", "--array-parallelism", "1",
]  # fmt: skip


def _run_dir(results: Path) -> Path | None:
    runs = sorted((results / "runs").glob("acl-*")) if (results / "runs").exists() else []
    return runs[0] if runs else None


def _training(results: Path) -> bool:
    """The sweep's pretraining job has written its first checkpoint (it is mid-training)."""
    run = _run_dir(results)
    return run is not None and (run / "pretrain.ckpt").exists()


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc and pgrep to follow the jobs")
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["kill", "kill-9"])
def test_a_killed_local_sweep_leaves_no_job_training_and_a_rerun_resumes_it(tmp_path, kill):
    """D7: after ``kill`` (exit 130) or ``kill -9`` of a submitit-local sweep its jobs trained on (PID 1),
    and a rerun started the same jobs beside them. Now the launcher stops its jobs on SIGTERM, and a
    job ends itself once its launcher is gone; the rerun resumes the run from its checkpoint, so the
    pretraining curve has every step exactly once. The rerun is checked after ``kill -9``, the abrupt
    end (no handler runs; SIGTERM's path kills the same jobs with SIGKILL): the same rerun after both
    cost 40 s of the suite for no other check."""
    results = tmp_path / "r"
    argv = ["sweep", *SWEEP_TINY, "--results-dir", str(results), "--reports-dir", str(tmp_path / "rep")]
    launcher = _bench(*argv)
    _wait_until(lambda: _training(results), 180, "the pretraining job's first checkpoint")
    jobs = _descendants(launcher.pid)  # submitit's controller and its task
    assert len(jobs) >= 2, jobs
    os.kill(launcher.pid, kill)
    launcher.wait(timeout=60)  # not communicate(): orphaned jobs would hold its pipes open
    try:
        assert _all_gone(jobs, 20), f"jobs still running after {kill!r} of their sweep"
    finally:
        _kill_left(jobs)
    err = launcher.stderr.read()
    if kill == signal.SIGTERM:
        assert launcher.returncode == 130 and "interrupted" in err.decode(), err.decode()[-2000:]
        return
    rerun = _bench(*argv)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    run = _run_dir(results)
    steps = [line.split(",")[1] for line in (run / "pretrain_history.csv").read_text().splitlines()[1:]]
    assert steps == [str(step) for step in range(3 * (1438 // 256))]  # every step once: resumed, never doubled
    log = "".join(path.read_text() for path in (results / "_jobs").glob("*_log.err"))
    assert "resumed acl from step" in log


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


def _torchrun(results: Path, *extra: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m bench.cli pretrain`` (acl, CPU, gloo) in its own session."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bench.cli",
        "pretrain", "--methods", "acl", "--device", "cpu", "--set", "pretrain.batch_size=256",
        "--set", "pretrain.checkpoint_every=1", "--results-dir", str(results), *extra,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _ranks(torchrun: int) -> dict[int, int]:
    """rank → pid of the bench processes torchrun started (read from their environment)."""
    ranks = {}
    for pid in _descendants(torchrun):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in values and b"bench.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
            ranks[int(values[b"RANK"])] = pid
    return ranks


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc to find the ranks")
def test_kill_9_of_torchrun_leaves_no_rank_running(tmp_path):
    """D7: torchrun starts its ranks in sessions of their own, so ``kill -9`` of torchrun orphaned both
    (they trained on). Each rank now asks for a parent-death signal when it joins the job."""
    results = tmp_path / "r"
    torchrun = _torchrun(results, "--epochs", "30", "--quiet")
    _wait_until(lambda: _training(results), 240, "the first checkpoint")
    ranks = _wait_until(lambda: len(_ranks(torchrun.pid)) == 2 and _ranks(torchrun.pid), 30, "both ranks")
    torchrun.kill()
    torchrun.wait(timeout=60)  # not communicate(): orphaned ranks would hold its pipes open
    try:
        assert _all_gone(list(ranks.values()), 20), "ranks still running after kill -9 of torchrun"
    finally:
        _kill_left(list(ranks.values()))


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(not LINUX, reason="needs /proc to find the ranks")
def test_a_killed_peer_rank_is_resumable_and_resume_continues_from_the_checkpoint(tmp_path):
    """D7: rank 1 killed mid-pretraining; rank 0's collective fails (gloo: ``Connection closed by peer``)
    and recorded ``resumable: false``, so ``--resume`` started again from step 0. A failed collective is
    ``PeerLost`` now, recorded resumable, and ``--resume`` continues from the last checkpoint."""
    results = tmp_path / "r"
    torchrun = _torchrun(results, "--epochs", "3")
    _wait_until(lambda: _training(results), 240, "the first checkpoint")
    ranks = _wait_until(lambda: len(_ranks(torchrun.pid)) == 2 and _ranks(torchrun.pid), 30, "both ranks")
    os.kill(ranks[1], signal.SIGKILL)
    torchrun.communicate(timeout=120)
    assert torchrun.returncode != 0
    run = _run_dir(results)
    failed = run / "failed.json"
    assert not failed.exists() or '"resumable": true' in failed.read_text(), failed.read_text()
    resumed = _torchrun(results, "--epochs", "3", "--resume")
    out, err = resumed.communicate(timeout=600)
    text = out.decode(errors="replace") + err.decode(errors="replace")
    assert resumed.returncode == 0, text[-3000:]
    (step,) = [int(line.split("from step ")[1].split("/")[0]) for line in text.splitlines() if "resumed acl" in line]
    assert step > 0 and (run / "done.json").exists()
    steps = [line.split(",")[1] for line in (run / "pretrain_history.csv").read_text().splitlines()[1:]]
    assert steps == [str(index) for index in range(3 * (1438 // 256))]


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
