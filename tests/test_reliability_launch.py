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
import time
from pathlib import Path

import pytest

from bench.engine import lifetime

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux") and Path("/proc").exists()


def _bench(*args: str, **popen) -> subprocess.Popen:
    """``bench ARGS`` in a session of its own (its process group is its pid), stdout and stderr piped."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
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
    workers = _wait_until(lambda: len(_descendants(process.pid)) >= 2 and _descendants(process.pid), 120, "workers")
    time.sleep(1.0)  # inside training, not at start-up
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    lines = err.decode(errors="replace").strip().splitlines()
    assert process.returncode == 130 and len(lines) <= 2, lines
    assert "interrupted" in lines[-1] and not any("Traceback" in line for line in lines)
    assert _all_gone(workers)
