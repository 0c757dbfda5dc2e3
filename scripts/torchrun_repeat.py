#!/usr/bin/env python
"""N consecutive 2-rank CPU torchrun pretrainings, each in a fresh store: how many complete.

Review 2's D17: ``torchrun --nproc-per-node 2 -m bench.cli pretrain --methods acl --device cpu --epochs 1``
aborted once in four tries (rank 0: ``terminate called without an active exception``, exit -6; rank 1
SIGTERMed; no encoder). The process groups now live once per job (``bench.engine.collective.session``).
This script repeats the review's command (with ``--set pretrain.batch_size=256``, the review's ``$T``
batch) and counts a try as passed when torchrun exits 0, the run is complete with its encoder, stderr
holds no ``terminate called`` and no process of the try is left (checked by its process group).

    python scripts/torchrun_repeat.py            # 20 tries (minutes of CPU)
    python scripts/torchrun_repeat.py -n 2       # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soak import group_alive  # scripts/ is this script's own folder, first on sys.path

REPO = Path(__file__).resolve().parent.parent


def command(results: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "bench.cli", "pretrain", "--methods", "acl", "--device", "cpu", "--epochs", "1",
        "--set", "pretrain.batch_size=256", "--quiet", "--results-dir", str(results),
    ]  # fmt: skip


def one_try(results: Path, timeout_s: float) -> dict:
    """One torchrun in its own session; its verdict and, when it failed, why."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    began = time.time()
    process = subprocess.Popen(
        command(results), cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        timed_out = True
    deadline = time.time() + 10
    while group_alive(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    left = group_alive(process.pid)
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    text = (out + err).decode(errors="replace")
    runs = sorted((results / "runs").glob("acl-*")) if (results / "runs").exists() else []
    complete = len(runs) == 1 and (runs[0] / "done.json").exists() and (runs[0] / "encoder.pt").exists()
    problems = [
        why
        for why, found in (
            (f"exit {process.returncode}", process.returncode != 0),
            (f"timed out after {timeout_s} s", timed_out),
            ("terminate called", "terminate called" in text),
            ("the run is not complete", not complete),
            ("processes left in its group", left),
        )
        if found
    ]
    tail = [line for line in text.strip().splitlines() if line.strip()][-3:] if problems else []
    return {"seconds": round(time.time() - began, 1), "passed": not problems, "problems": problems, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tries", type=int, default=20, help="consecutive torchrun pretrainings (default 20)")
    parser.add_argument("--timeout-s", type=float, default=600, help="limit of one try (default 600)")
    parser.add_argument("--workdir", help="where the stores go (default: a new temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    args = parser.parse_args(argv)
    if args.tries < 1:
        parser.error(f"--tries={args.tries} is invalid: allowed integers >= 1")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="acl-bench-torchrun-"))
    tries = []
    for index in range(args.tries):
        verdict = one_try(work / f"try-{index + 1}", args.timeout_s)
        tries.append(verdict)
        if not args.json:
            state = "passed" if verdict["passed"] else "FAILED"
            print(f"try {index + 1}/{args.tries}: {state} ({verdict['seconds']} s)", flush=True)
            for line in verdict["problems"] + verdict["tail"]:
                print(f"  {line}", flush=True)
    passed = sum(verdict["passed"] for verdict in tries)
    summary = {"tries": len(tries), "passed": passed, "failed": len(tries) - passed, "workdir": str(work)}
    if args.json:
        print(json.dumps({**summary, "details": tries}))
    else:
        print(f"{passed}/{len(tries)} torchrun pretrainings passed (stores in {work})")
    return 0 if passed == len(tries) else 1


if __name__ == "__main__":
    sys.exit(main())
