"""Start ``bench`` as a terminal would (forked from the test's process) and follow the processes it starts
(workers, jobs, ranks).

Shared by the tests that kill launchers, sweeps and runs mid-way (``test_reliability*.py``, ``test_sweep.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from bench.engine import lifetime

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux") and Path("/proc").exists()
# what the bench processes these tests start find in their environment (the package, one thread each)
CHILD_ENVIRONMENT = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _as_from_a_terminal() -> None:
    """Signals as a shell starts a command, whatever the test's process holds at that moment: SIGINT raising
    KeyboardInterrupt (a library's thread calling C ``system()`` ignores SIGINT in its caller meanwhile, and
    ``bench`` would then never see the Ctrl-C these tests send: seen in CI, 60 s timeouts and orphans that slowed
    every later test); SIGTERM, SIGQUIT, SIGHUP, SIGALRM, SIGUSR1/2 and SIGCHLD at their defaults."""
    for number in (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGCHLD):  # fmt: skip
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def bench(*args: str) -> subprocess.Popen:
    """``bench ARGS`` in a new interpreter and a session of its own (its process group is its pid), stdout and
    stderr piped: for a test of what the interpreter does too (its exit after an interrupt)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args], env={**os.environ, **CHILD_ENVIRONMENT},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_as_from_a_terminal,
    )  # fmt: skip


def run_forked(body) -> int:
    """Fork; the child runs ``body()`` and exits with its return value (an int; a traceback and 1 if it raised),
    never through the test process's own exit. Returns the child's pid (``os.waitpid`` it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # the parent's garbage stays the parent's: no finalizer of the test process runs in the child
    pid = os.fork()
    gc.unfreeze()
    if pid:
        return pid
    code = 1
    try:
        atexit._clear()  # the test process's exit handlers are not the child's
        # one thread, as OMP_NUM_THREADS=1 gives a new interpreter: the test process's OpenMP threads do not
        # survive the fork, and a parallel region over them would hang the child
        torch.set_num_threads(1)
        code = body()
    except SystemExit as stop:  # as the interpreter exits: None is 0, a message is printed and is 1
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            for thread in threading.enumerate():  # the interpreter's shutdown: its non-daemon threads, then
                if thread is not threading.current_thread() and not thread.daemon:  # its exit handlers
                    thread.join()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


class ForkedBench:
    """``bench ARGV`` in a child forked from the test's process, in a session of its own (its process group is
    its pid), stdout and stderr kept in files; a handle with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``,
    ``send_signal``, ``kill``, ``communicate``, ``returncode`` and ``stderr``.

    Forked, not a new interpreter: the test's process has torch and the package imported, and a new interpreter
    spends about 4 s of CPU importing them before ``bench`` does anything. What these tests check comes after:
    how ``bench`` and the processes it starts (workers, jobs) end. The child starts as a shell starts a command
    (``_as_from_a_terminal``), stdin empty, ``sys.argv`` its own, ``environment`` added to its environment, and
    ends as the interpreter does (``run_forked``); the handle returns once the child has done so."""

    def __init__(self, *argv: str, environment: dict[str, str] | None = None):
        self.args = ("bench", *argv)
        self._environment = {**CHILD_ENVIRONMENT, **(environment or {})}
        self.returncode: int | None = None
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        # imported here, once, for every child to inherit: the CLI, and torch._dynamo, which torch.optim imports at
        # a run's first optimiser step (2 to 3 s of CPU; `bench run` imports it before its forks for the same reason)
        import torch._dynamo  # noqa: F401

        import bench.cli.app  # noqa: F401

        ready, started = os.pipe()
        self.pid = run_forked(lambda: self._child(started))
        os.close(started)
        os.read(ready, 1)  # its session exists: os.killpg(pid, ...) reaches it from here on
        os.close(ready)

    def _child(self, started: int) -> int:
        os.setsid()
        _as_from_a_terminal()
        os.write(started, b"1")
        for fd, target in ((0, os.open(os.devnull, os.O_RDONLY)), (1, self._out.fileno()), (2, self._err.fileno())):
            os.dup2(target, fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the child's whole life)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = list(self.args)
        os.environ.update(self._environment)  # ``environment``, and for the jobs it starts in turn
        from bench.cli.app import main

        return main(list(self.args[1:]))

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(list(self.args), timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        self.wait(timeout)
        return self._read(self._out), self._read(self._err)

    @property
    def stderr(self) -> io.BytesIO:
        return io.BytesIO(self._read(self._err))

    @staticmethod
    def _read(stream) -> bytes:
        """The whole file, read at offset 0 without moving the offset the child writes at."""
        return os.pread(stream.fileno(), os.fstat(stream.fileno()).st_size, 0)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """torch's thread count set to ``count`` (None: left) inside the block, restored after it."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def jobs_in_this_process(submitted: list, threads: int | None = None):
    """A stand-in for ``bench.runs.sweep.run_submitit_local``: each job, in submission order, through the CLI's
    stage entry in this process (at ``threads`` torch threads), appended to ``submitted``; returns the failed
    jobs' keys as submitit-local does. For a test whose check is not submitit's executor (tests/test_sweep.py
    tests that) but what a sweep's or study's jobs do; each job process would cost about 5 s of CPU first."""

    def run(jobs, options, entry, executor=None) -> dict[str, str]:
        submitted.extend(jobs)
        with torch_threads(threads):
            return {job.key: "failed" for job in jobs if entry(list(job.argv)) != 0}

    return run


def two_jobs_run(results: Path, start=ForkedBench) -> ForkedBench | subprocess.Popen:
    """``bench run --jobs 2`` of acl and simclr for 200 epochs (never ends by itself), stores under ``results``;
    ``start``: ``ForkedBench`` or ``bench`` (a new interpreter)."""
    return start(
        "run", "--methods", "acl", "simclr", "--jobs", "2", "--epochs", "200", "--device", "cpu", "--quiet",
        "--no-report", "--results-dir", str(results / "r"), "--reports-dir", str(results / "rep"),
    )  # fmt: skip


def workers(process: ForkedBench) -> list[int]:
    """The pids below ``process`` once its two workers have started (two minutes at most)."""
    return wait_until(lambda: len(descendants(process.pid)) >= 2 and descendants(process.pid), 120, "workers")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, …)."""
    found, queue = [], [pid]
    while queue:
        children = subprocess.run(["pgrep", "-P", str(queue.pop())], capture_output=True, text=True).stdout.split()
        found += [int(child) for child in children]
        queue += [int(child) for child in children]
    return [child for child in found if lifetime.process_alive(child)]


def wait_until(predicate, timeout_s: float, what: str):
    """``predicate()``'s first true value, polled every 0.2 s; an AssertionError naming ``what`` after the timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def all_gone(pids: list[int], timeout_s: float = 20) -> bool:
    """Whether every process in ``pids`` ended (zombies count as ended) within ``timeout_s``."""
    try:
        wait_until(lambda: not any(lifetime.process_alive(pid) for pid in pids), timeout_s, "the processes to end")
    except AssertionError:
        return False
    return True


def kill_left(pids: list[int]) -> None:
    """SIGKILL whatever of ``pids`` still runs: a failed test must not leave training beside the rest of the suite."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
