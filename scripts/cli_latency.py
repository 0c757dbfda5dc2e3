"""Wall time of the ``bench`` command's answers that must come at once (issue #22: <= 0.5 s).

    python scripts/cli_latency.py                 # --version, --help, each `<cmd> --help`: median of 5
    python scripts/cli_latency.py --repeats 9 --limit 0.5 --bench .venv/bin/bench

Each answer is a fresh process (as a user's shell starts it), timed from start to exit; the table gives
the median and the slowest of the repeats. Exit status 1 when a median is over ``--limit``.
``tests/test_cli_light.py`` checks the cause (no torch, pandas, … imported) rather than seconds, which
depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[str]:
    """The subcommands, from the parser itself (so a new one is timed too)."""
    sys.path.insert(0, str(ROOT))
    from bench.cli.app import build_parser  # scripts/ sits outside the package: the import needs the path

    return list(build_parser()._subparsers._group_actions[0].choices)


def timed(command: list[str], repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per answer; the median is reported (default 5)")
    parser.add_argument("--limit", type=float, default=0.5, help="seconds a median may take (default 0.5)")
    parser.add_argument("--bench", help="the bench executable to time (default: python -m bench.cli)")
    args = parser.parse_args()
    prefix = [args.bench] if args.bench else [sys.executable, "-m", "bench.cli"]
    answers = [["--version"], ["--help"], *[[name, "--help"] for name in commands()]]
    print(f"{'answer':<24} {'median s':>9} {'max s':>7}   ({args.repeats} runs each: {' '.join(prefix)})")
    over = []
    medians = []
    for answer in answers:
        seconds = timed([*prefix, *answer], args.repeats)
        median = statistics.median(seconds)
        medians.append(median)
        flag = "  over the limit" if median > args.limit else ""
        print(f"{'bench ' + ' '.join(answer):<24} {median:9.3f} {max(seconds):7.3f}{flag}")
        if median > args.limit:
            over.append(" ".join(answer))
    print(f"slowest median {max(medians):.3f} s; limit {args.limit} s; over: {over or 'none'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
