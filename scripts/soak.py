#!/usr/bin/env python
"""Soak test of the results store: kill `bench run` at random moments, resume, and check the store.

Issue 15 ("nothing wrong is ever stored, no finished work is lost"): one uninterrupted run of a small
plan on the embedded digits is the reference. Then the same plan is started again and again with
``--resume`` in a second store, each attempt killed after a random delay, by a random signal:

- ``SIGKILL`` of the whole process group (a lost node, the OOM killer taking everything),
- ``SIGKILL`` of the main process only (its pool workers must die with it),
- ``SIGTERM`` of the main process (a scheduler's stop: exit 130, like Ctrl-C).

With ``--damage`` (the default) ``results.csv`` is also damaged between some attempts (torn last row,
zero bytes, random bytes): the run directories are the truth and the next run rebuilds the index.
After every attempt the store is checked: every checkpoint, encoder and classifier loads with
``torch.load(weights_only=True)``, every JSON file parses, every complete run's ``rows.csv`` validates,
no process of the attempt is left. Whenever an attempt finishes the plan before its kill, and at the
end (after one last uninterrupted ``--resume``), the store's rows (every column but timestamp and
wall time) and encoders must equal the reference's; the next attempt then starts a new store.

This is a script, not a CI test (minutes of CPU): ``python scripts/soak.py --iterations 20``.
``--fast`` shrinks the plan (one method, one scheme, in-process) for a quick check;
``tests/test_soak.py`` runs it for one attempt.

``--path sweep|collect|torchrun`` soaks the launchers added since (issue 21) the same way: the
submitit-local sweep, ``collect --from`` and 2-rank torchrun, with kills of the launcher, a job, a
rank or a collect, copies and links planted in the store (``scripts/soak_paths.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402 - after the repository is importable

from bench.store.results import ResultsStore, RunDir  # noqa: E402

KILLS = ("SIGKILL group", "SIGKILL main", "SIGTERM main")
DAMAGES = ("torn last row", "zero bytes", "random bytes")
# Columns of a row that legitimately differ between two runs of the same plan (the numbers never do).
VOLATILE_COLUMNS = ("timestamp", "wall_s", "code_version")  # the tree may be edited during a long soak
SETTINGS = [
    "--epochs",
    "2",
    "--finetune-epochs",
    "1",
    "--n-eval",
    "32",
    "--attacks",
    "clean,pgd20",
    "--set",
    "evaluate.epsilon_curve=",
    "--set",
    "pretrain.checkpoint_every=5",
    "--device",
    "cpu",
]
FULL = {"methods": ["simclr", "acl"], "extra": ["--schemes", "SLF,ALF", "--jobs", "2"]}
FAST = {
    "methods": ["simclr"],
    "extra": ["--schemes", "SLF", "--jobs", "1", "--epochs", "1", "--n-eval", "16", "--set", "pretrain.batch_size=256"],
}


def bench_command(store: Path, plan: dict, resume: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        "--methods",
        *plan["methods"],
        "--results-dir",
        str(store),
        "--no-report",
        "--quiet",
        *SETTINGS,
        *plan["extra"],
    ]
    return command + (["--resume"] if resume else [])


def start(command: list[str]) -> subprocess.Popen:
    """A bench process in its own session (its process group is its id), stderr kept for the log."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_group(pgid: int, timeout_s: float) -> bool:
    """Whether every process of the group has exited within the timeout (zombies reaped by init count as gone)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    return False


def kill_attempt(command: list[str], delay_s: float, kill: str) -> dict:
    """Start one attempt, kill it after ``delay_s`` (unless it finished), and wait for all its processes."""
    process = start(command)
    started = time.time()
    try:
        process.wait(timeout=delay_s)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    if not finished:
        if kill == "SIGKILL group":
            os.killpg(process.pid, signal.SIGKILL)
        elif kill == "SIGKILL main":
            process.kill()
        else:
            process.terminate()
    _, err = process.communicate(timeout=120)
    leftover = not wait_for_group(process.pid, 60)
    if leftover:  # never leave a stray process behind, even when the check fails
        os.killpg(process.pid, signal.SIGKILL)
    return {
        "delay_s": round(delay_s, 2),
        "kill": "none (finished first)" if finished else kill,
        "exit": process.returncode,
        "seconds": round(time.time() - started, 2),
        "orphans_left": leftover,
        "stderr": err.decode(errors="replace").strip().splitlines()[-1:],
    }


def damage_index(store: Path, kind: str, rng: random.Random) -> bool:
    """Damage results.csv the way a crash of another tool or a bad copy would; False when there is none."""
    table = ResultsStore(store).table
    if not table.exists() or table.stat().st_size == 0:
        return False
    data = table.read_bytes()
    if kind == "torn last row":
        table.write_bytes(data[: -rng.randint(2, 12)])
    elif kind == "zero bytes":
        table.write_bytes(b"")
    else:
        table.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
    return True


def check_store(store: Path) -> list[str]:
    """Problems in the store: a stored file that does not load or parse, a complete run without valid rows."""
    problems = []
    for run in ResultsStore(store).run_dirs():
        for path in sorted(run.path.iterdir()):
            if path.name.endswith(".tmp"):
                continue  # a SIGKILL inside a write leaves its temp file; never read, removed by nothing
            try:
                if path.suffix in (".pt", ".ckpt"):
                    torch.load(path, map_location="cpu", weights_only=True)
                elif path.suffix == ".json":
                    json.loads(path.read_text(encoding="utf-8"))
                elif path.name == RunDir.rows.name:
                    if not run.read_rows() and run.is_complete() and _schemes(run) != []:  # pretrain-only: no rows
                        problems.append(f"{path}: a complete run without rows")
                elif path.name.startswith("rows_") and path.suffix == ".csv":
                    run.read_scheme_rows(path.stem.removeprefix("rows_"))
            except Exception as error:  # noqa: BLE001 - every unreadable file is a finding
                problems.append(f"{path}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        if run.is_complete() and not run.rows.exists():
            problems.append(f"{run.path}: complete, but rows.csv is missing")
    return problems


def _schemes(run: RunDir) -> list | None:
    """The finetuning schemes the run's config names (``[]``: ``bench pretrain``), None when unreadable."""
    recorded = run.read_json_or_none(run.config)
    finetune = recorded.get("finetune") if isinstance(recorded, dict) else None
    return finetune.get("schemes") if isinstance(finetune, dict) else None


def comparable_rows(store: Path) -> list[tuple]:
    rows = ResultsStore(store).read_rows()
    return sorted(
        tuple(value for name, value in dataclasses.asdict(row).items() if name not in VOLATILE_COLUMNS) for row in rows
    )


def differing_encoders(reference: Path, soaked: Path) -> list[str]:
    """Run ids whose encoder differs (tensor by tensor) from the uninterrupted run's."""
    differing = []
    for run in ResultsStore(reference).run_dirs():
        other = RunDir(soaked / "runs" / run.run_id)
        if not other.encoder.exists():
            differing.append(f"{run.run_id} (no encoder)")
            continue
        ours, theirs = (
            torch.load(path, map_location="cpu", weights_only=True) for path in (run.encoder, other.encoder)
        )
        tensors = [(key, value) for key, value in _tensors(ours)]
        if len(tensors) != len(list(_tensors(theirs))) or not all(
            torch.equal(value, other_value) for (_, value), (_, other_value) in zip(tensors, _tensors(theirs))
        ):
            differing.append(run.run_id)
    return differing


def _tensors(payload, prefix: str = ""):
    if isinstance(payload, torch.Tensor):
        yield prefix, payload
    elif isinstance(payload, dict):
        for key in sorted(payload, key=str):
            yield from _tensors(payload[key], f"{prefix}.{key}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def compare_with_reference(store: Path, reference: Path) -> list[str]:
    """Problems of a finished store: unreadable files, rows or encoders other than the uninterrupted run's."""
    problems = check_store(store)
    if comparable_rows(store) != comparable_rows(reference):
        problems.append("the rows differ from the uninterrupted run's")
    return problems + [
        f"encoder of {run_id} differs from the uninterrupted run's" for run_id in differing_encoders(reference, store)
    ]


def attempt_once(store: Path, plan: dict, rng: random.Random, reference_s: float, damage: bool) -> dict:
    """One attempt on ``store``: started with --resume, killed at a random moment, then the store checked."""
    attempt = kill_attempt(
        bench_command(store, plan, resume=True), rng.uniform(0.5, reference_s * 0.8), rng.choice(KILLS)
    )
    found = check_store(store)
    if attempt["orphans_left"]:
        found.append("processes of the attempt were still alive 60 s after it was killed")
    if attempt["kill"] == "SIGTERM main" and attempt["exit"] not in (130, 0):
        found.append(f"SIGTERM gave exit {attempt['exit']} (expected 130): {attempt['stderr']}")
    attempt["problems"] = found
    return attempt


def soak(work: Path, iterations: int, fast: bool, damage: bool, seed: int, log=print) -> dict:
    """Reference run, ``iterations`` attempts, the final run, and the verdict (a JSON-able dict).

    The attempts go in rounds: each round has its own store (``soaked-N``), resumed attempt after
    attempt; an attempt that finishes the plan before its kill ends the round, whose store is then
    compared with the reference, and the next attempt starts a new round from nothing."""
    rng = random.Random(seed)
    plan = FAST if fast else FULL
    reference = work / "reference"
    started = time.time()
    result = subprocess.run(bench_command(reference, plan, resume=False), cwd=REPO, capture_output=True, env=_env())
    if result.returncode != 0:
        raise SystemExit(f"soak: the reference run failed: {result.stderr.decode(errors='replace').strip()[-500:]}")
    reference_s = time.time() - started
    log(f"reference run: {reference_s:.1f} s, {len(comparable_rows(reference))} rows")
    attempts, problems, rounds = [], [], 1
    for index in range(iterations):
        store = work / f"soaked-{rounds}"
        attempt = attempt_once(store, plan, rng, reference_s, damage)
        found = attempt["problems"]
        if attempt["kill"].startswith("none") and attempt["exit"] == 0:  # the plan finished: the round is over
            found += compare_with_reference(store, reference)
            attempt["round_finished"] = rounds
            rounds += 1
        elif damage and rng.random() < 0.3:  # the next attempt must rebuild the index from the run directories
            kind = rng.choice(DAMAGES)
            attempt["damage"] = kind if damage_index(store, kind, rng) else "none (no results.csv yet)"
        problems += [f"attempt {index + 1} ({store.name}): {problem}" for problem in found]
        attempts.append(attempt)
        log(f"attempt {index + 1}/{iterations}: " + json.dumps({k: v for k, v in attempt.items() if k != "stderr"}))
    store = work / f"soaked-{rounds}"
    final = subprocess.run(bench_command(store, plan, resume=True), cwd=REPO, capture_output=True, env=_env())
    if final.returncode != 0:
        reason = final.stderr.decode(errors="replace").strip()[-300:]
        problems.append(f"the final run exited {final.returncode}: {reason}")
    problems += [f"final run ({store.name}): {problem}" for problem in compare_with_reference(store, reference)]
    leftovers = sorted(str(path.relative_to(work)) for path in work.glob("soaked-*/**/*.tmp"))
    return {
        "iterations": iterations,
        "rounds_compared": rounds,
        "fast": fast,
        "seed": seed,
        "reference_s": round(reference_s, 1),
        "kills": {kind: sum(a["kill"] == kind for a in attempts) for kind in (*KILLS, "none (finished first)")},
        "rows": len(comparable_rows(store)),
        "temp_files_left": leftovers,
        "problems": problems,
        "ok": not problems,
        "total_s": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10, help="killed attempts before the final run")
    parser.add_argument("--fast", action="store_true", help="one method, one scheme, one epoch, in-process")
    parser.add_argument("--no-damage", dest="damage", action="store_false", help="kills only; never damage results.csv")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments, signals and damage")
    parser.add_argument("--workdir", help="where the two stores go (default: a new temporary directory, kept)")
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    parser.add_argument(
        "--path", choices=("run", "sweep", "collect", "torchrun"), default="run", help="what to soak (default: run)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 0:
        parser.error(f"--iterations={args.iterations} is invalid: allowed integers >= 0")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="acl-bench-soak-"))
    if (work / "reference").exists() or any(work.glob("soaked-*")):
        parser.error(f"--workdir={str(work)!r} is invalid: allowed a directory without reference/ and soaked-*/")
    log = (lambda _: None) if args.json else print
    if args.path == "run":
        verdict = soak(work, args.iterations, args.fast, args.damage, args.seed, log=log)
    else:
        import soak_paths  # here, not at the top: soak_paths imports this module's helpers

        verdict = soak_paths.soak_path(args.path, work, args.iterations, args.fast, args.seed, log=log)
    verdict["workdir"] = str(work)
    if args.json:
        print(json.dumps(verdict))
    else:
        print(
            f"{'OK' if verdict['ok'] else 'FAILED'}: {args.path}: {verdict['iterations']} attempts {verdict['kills']}, "
            f"{verdict['rounds_compared']} finished store(s) compared, {verdict['rows']} rows, "
            f"{len(verdict['temp_files_left'])} temp file(s) left, "
            f"{verdict['total_s']} s (stores in {work})"
        )
        for problem in verdict["problems"]:
            print(f"  {problem}")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
