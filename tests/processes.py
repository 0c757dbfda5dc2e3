"""Start ``bench`` as a terminal would and follow the processes it starts (workers, jobs, ranks).

Shared by the tests that kill launchers, sweeps and runs mid-way (``test_reliability*.py``, ``test_sweep.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def bench(*args: str, **popen) -> subprocess.Popen:
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


def two_jobs_run(results: Path) -> subprocess.Popen:
    """``bench run --jobs 2`` of acl and simclr for 200 epochs (never ends by itself), stores under ``results``."""
    return bench(
        "run", "--methods", "acl", "simclr", "--jobs", "2", "--epochs", "200", "--device", "cpu", "--quiet",
        "--no-report", "--results-dir", str(results / "r"), "--reports-dir", str(results / "rep"),
    )  # fmt: skip


def workers(process: subprocess.Popen) -> list[int]:
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
