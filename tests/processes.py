"""Start ``bench`` as a terminal would (forked from the test's process) and follow the processes it starts
(workers, jobs, ranks).

Shared by the tests that kill launchers, sweeps and runs mid-way (``test_reliability*.py``, ``test_sweep.py``).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.engine import lifetime

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux") and Path("/proc").exists()


class ForkedBench:
    """``bench ARGV`` in a child forked from the test's process, in a session of its own (its process group is
    its pid), stdout and stderr kept in files; a handle with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``,
    ``send_signal``, ``kill``, ``communicate``, ``returncode`` and ``stderr``.

    Forked, not a new interpreter: the test's process has torch and the package imported, and a new interpreter
    spends about 4 s of CPU importing them before ``bench`` does anything. What these tests check comes after:
    how ``bench`` and the processes it starts (workers, jobs) end. The child starts as a shell starts a command,
    whatever the test's process holds at that moment: SIGINT raising KeyboardInterrupt (a library's thread
    calling C ``system()`` ignores SIGINT in its caller meanwhile, and ``bench`` would then never see the Ctrl-C
    these tests send: seen in CI, 60 s timeouts and orphans that slowed every later test), SIGTERM, SIGQUIT,
    SIGUSR1/2 and SIGCHLD at their defaults, stdin empty, ``sys.argv`` its own, ``environment`` added to its
    environment."""

    def __init__(self, *argv: str, environment: dict[str, str] | None = None):
        self.args = ("bench", *argv)
        self._environment = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(environment or {})}
        self.returncode: int | None = None
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        # imported here, once, for every child to inherit: the CLI, and torch._dynamo, which torch.optim imports at
        # a run's first optimiser step (2 to 3 s of CPU; `bench run` imports it before its forks for the same reason)
        import torch._dynamo  # noqa: F401

        import bench.cli.app  # noqa: F401

        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child()

    def _child(self) -> None:
        code = 1
        try:
            os.setsid()
            for number in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
                signal.signal(number, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd, target in ((0, os.open(os.devnull, os.O_RDONLY)), (1, self._out.fileno()), (2, self._err.fileno())):
                os.dup2(target, fd)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the child's whole life)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.argv = list(self.args)
            os.environ.update(self._environment)  # ``environment``, and for the jobs it starts in turn
            # one thread, as OMP_NUM_THREADS=1 gives a new interpreter: the test process's OpenMP threads do not
            # survive the fork, and a parallel region over them would hang the child
            torch.set_num_threads(1)
            from bench.cli.app import main

            code = main(list(self.args[1:]))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)  # never the test process's own exit handlers

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
        stream.seek(0)
        return stream.read()


def two_jobs_run(results: Path) -> ForkedBench:
    """``bench run --jobs 2`` of acl and simclr for 200 epochs (never ends by itself), stores under ``results``."""
    return ForkedBench(
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
