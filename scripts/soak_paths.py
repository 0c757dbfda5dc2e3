"""The soak of ``scripts/soak.py`` on the launchers added since issue 15 (issue 21): ``--path sweep``,
``collect`` or ``torchrun``.

Each path has an uninterrupted reference, then attempts on a second store, each killed at a random
moment by a random kill of that path, the store checked after every attempt, and every store that an
attempt (or the final uninterrupted run) finishes compared with the reference:

- ``sweep`` (``bench sweep --launcher submitit-local``): SIGKILL of the whole group, of the launcher
  alone, SIGTERM of the launcher (exit 130), SIGKILL of one job (submitit's task). Between attempts a
  backup copy of a run directory (``runs/<id>.bak``, one value changed) or a link out of the store is
  sometimes planted; neither may reach the index.
- ``torchrun`` (2 ranks, CPU, ``bench pretrain``): SIGKILL of the group, of torchrun alone, SIGTERM of
  torchrun, SIGKILL of one rank. The ranks live in sessions of their own, so each attempt remembers
  every process it saw and checks each of them, not only its group.
- ``collect`` (``bench collect --from``): SIGKILL of the group, of the process, SIGTERM. The source
  store holds a run with a link out of it (refused, never followed), a backup copy (not a run) and
  big files (so kills land inside copies); the target must end with the reference's runs and rows,
  no link, and no ``.incoming`` staging folder.

After every attempt no process of it may be left (its group, and every process it started).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import soak  # scripts/soak.py: the store checks, the comparison with the reference, the settings
import torch

from bench.engine.lifetime import process_alive
from bench.store.results import ResultsStore
from bench.store.rows import ResultRow

PATHS = ("sweep", "collect", "torchrun")
KILLS = {
    "sweep": ("SIGKILL group", "SIGKILL main", "SIGTERM main", "SIGKILL job"),
    "collect": ("SIGKILL group", "SIGKILL main", "SIGTERM main"),
    "torchrun": ("SIGKILL group", "SIGKILL main", "SIGTERM main", "SIGKILL rank"),
}
PLANTS = ("backup copy", "link out of the store")
SECRET = "soak: this file lies outside every store\n"


def command(path: str, store: Path, fast: bool, source: Path | None = None) -> list[str]:
    bench = [sys.executable, "-m", "bench.cli"]
    if path == "collect":
        return [*bench, "collect", "--results-dir", str(store), "--from", str(source), "--quiet"]
    if path == "torchrun":
        epochs = "1" if fast else "2"
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "bench.cli", "pretrain", "--methods", "simclr", "--device", "cpu", "--epochs", epochs, "--set",
            "pretrain.batch_size=256", "--set", "pretrain.checkpoint_every=2", "--quiet", "--resume",
            "--results-dir", str(store),
        ]  # fmt: skip
    plan = soak.FAST if fast else soak.FULL
    at = plan["extra"].index("--jobs")  # a sweep has no --jobs: its launcher decides
    extra = plan["extra"][:at] + plan["extra"][at + 2 :]
    return [
        *bench, "sweep", "--launcher", "submitit-local", "--methods", *plan["methods"], "--results-dir",
        str(store), "--no-report", "--quiet", "--array-parallelism", "1" if fast else "2", *soak.SETTINGS, *extra,
    ]  # fmt: skip


def descendants(pid: int) -> set[int]:
    found, queue = set(), [pid]
    while queue:
        listed = subprocess.run(["pgrep", "-P", str(queue.pop())], capture_output=True, text=True).stdout.split()
        found.update(int(child) for child in listed)
        queue += [int(child) for child in listed]
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _victim(kill: str, seen: set[int], rng: random.Random) -> int | None:
    """The job or rank a ``SIGKILL job``/``SIGKILL rank`` hits: a live submitit task, a live bench rank."""
    marker = b"submitit.core._submit" if kill == "SIGKILL job" else b"bench.cli"
    found = sorted(pid for pid in seen if process_alive(pid) and marker in _cmdline(pid))
    return rng.choice(found) if found else None


def attempt(path: str, argv: list[str], delay_s: float, kill: str, rng: random.Random) -> dict:
    """Start one attempt, kill it after ``delay_s`` the way ``kill`` says, then wait for every process it started."""
    process = soak.start(argv)
    seen: set[int] = set()
    started, finished, hit = time.time(), False, kill
    while time.time() - started < delay_s:
        seen |= descendants(process.pid)
        if process.poll() is not None:
            finished = True
            break
        time.sleep(0.2)
    if not finished:
        seen |= descendants(process.pid)
        if kill == "SIGKILL group":
            os.killpg(process.pid, signal.SIGKILL)
        elif kill == "SIGKILL main":
            process.kill()
        elif kill == "SIGTERM main":
            process.terminate()
        else:
            victim = _victim(kill, seen, rng)
            if victim is None:  # nothing of that kind runs right now: the launcher instead
                hit = "SIGKILL main (no job or rank running)"
                process.kill()
            else:
                os.kill(victim, signal.SIGKILL)
    try:  # wait, not communicate: orphans would hold the pipe open
        process.wait(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    gone = soak.wait_for_group(process.pid, 60)
    deadline = time.time() + 60
    while time.time() < deadline and any(process_alive(pid) for pid in seen):
        time.sleep(0.2)
    left = sorted(pid for pid in seen if process_alive(pid))
    for pid in left:  # never leave a stray process behind, even when the check fails
        os.kill(pid, signal.SIGKILL)
    if not gone:
        os.killpg(process.pid, signal.SIGKILL)
    _, err = process.communicate()
    return {
        "delay_s": round(delay_s, 2),
        "kill": "none (finished first)" if finished else hit,
        "exit": process.returncode,
        "seconds": round(time.time() - started, 2),
        "orphans_left": (not gone) or bool(left),
        "stderr": err.decode(errors="replace").strip().splitlines()[-1:],
    }


# --------------------------------------------------------------------------- planted files


def plant(store: Path, kind: str, work: Path) -> str:
    """A backup copy of a run directory (one value changed) or a link out of the store, in ``store``."""
    runs = ResultsStore(store).run_dirs() if (store / "runs").is_dir() else []
    if not runs:
        return "none (no run yet)"
    run = runs[0]
    if kind == "backup copy":
        copy = run.path.with_name(run.run_id + ".bak")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run.path, copy, symlinks=True)
        rows = copy / "rows.csv"
        if rows.exists():  # D5's probe: the copy's number must never reach the index or the report
            lines = rows.read_text().splitlines(keepends=True)
            changed = [re.sub(r",accuracy,[0-9.]+,", ",accuracy,99.0,", line, count=1) for line in lines[1:]]
            rows.write_text("".join(lines[:1] + changed))
        return f"{kind} {copy.name}"
    link = run.path / "notes.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(work / "secret.txt")
    return f"{kind} {run.run_id}/notes.txt"


def collect_source(work: Path, runs: int = 6, megabytes: int = 4) -> Path:
    """A store to merge from: ``runs`` complete runs with big encoders, one of them holding a link out
    of the store (refused), plus a backup copy (not a run)."""
    source = ResultsStore(work / "source")
    for index in range(runs):
        run_id = f"simclr-soak-s{index}"
        run = source.run(run_id).create()
        run.write_json(run.config, {"run_id": run_id, "seed": index})
        torch.save({"model": {"w": torch.arange(megabytes * 2**18, dtype=torch.float32) + index}}, run.encoder)
        row = {**_ROW, "run_id": run_id, "seed": str(index), "value": f"{50 + index}.0"}
        run.mark_complete([ResultRow.from_csv(row)], {"finished": True})
    source.collect()
    plant(work / "source", "backup copy", work)
    (work / "source" / "runs" / "simclr-soak-s0" / "notes.txt").symlink_to(work / "secret.txt")
    return work / "source"


_ROW = {
    "timestamp": "2025-01-01T00:00:00+00:00", "preset": "smoke", "method": "simclr", "dataset": "digits",
    "eval_dataset": "digits", "scheme": "SLF", "attack": "clean", "metric": "accuracy", "epsilon": "0.0314",
    "n_eval": "16", "pretrain_epochs": "1", "finetune_epochs": "1", "config_hash": "h", "code_version": "0",
    "torch_version": "2", "device": "cpu", "wall_s": "1.0", "flags": "", "protocol": "unified",
}  # fmt: skip


def store_problems(path: str, store: Path, reference: Path) -> list[str]:
    """A finished store against the reference: rows, encoders, files, links and staging folders."""
    problems = soak.compare_with_reference(store, reference)
    runs_here = sorted(run.run_id for run in ResultsStore(store).run_dirs())
    if runs_here != sorted(run.run_id for run in ResultsStore(reference).run_dirs()):
        problems.append(f"runs {runs_here} are not the reference's")
    problems += [f"stray staging folder {found.name}" for found in (store / "runs").glob(".*.incoming")]
    if path == "collect":
        problems += [f"{found}: a link copied in" for found in store.rglob("*") if found.is_symlink()]
        problems += [
            f"{found}: a file from outside the source"
            for found in store.rglob("*")
            if found.is_file() and not found.is_symlink() and found.stat().st_size < 100 and SECRET in _text(found)
        ]
    return problems


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


# --------------------------------------------------------------------------- the soak of one path


def soak_path(path: str, work: Path, iterations: int, fast: bool, seed: int, log=print) -> dict:
    """Reference, ``iterations`` killed attempts in rounds (a round ends when an attempt finishes, its
    store is compared and the next round starts afresh), one final uninterrupted run, the verdict."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    (work / "secret.txt").write_text(SECRET)
    source = collect_source(work) if path == "collect" else None
    reference = work / "reference"
    started = time.time()
    done = subprocess.run(command(path, reference, fast, source), cwd=soak.REPO, capture_output=True, env=soak._env())
    reference_s = time.time() - started
    expected = done.returncode  # collect: 1, the source's run with a link is refused
    if expected != (1 if path == "collect" else 0):
        raise SystemExit(f"soak: the reference {path} exited {expected}: {done.stderr.decode(errors='replace')[-800:]}")
    log(f"reference {path}: {reference_s:.1f} s, exit {expected}, {len(soak.comparable_rows(reference))} rows")
    attempts, problems, rounds = [], [], 1
    for index in range(iterations):
        store = work / f"soaked-{rounds}"
        argv = command(path, store, fast, source)
        result = attempt(path, argv, rng.uniform(0.5, max(1.0, reference_s * 0.8)), rng.choice(KILLS[path]), rng)
        found = soak.check_store(store) if store.exists() else []
        if result["orphans_left"]:
            found.append("processes of the attempt were still alive 60 s after it ended")
        # -15: killed before bench installed its handler (still importing torch): no traceback either
        if result["kill"] == "SIGTERM main" and path != "torchrun" and result["exit"] not in (130, -15, expected):
            found.append(f"SIGTERM gave exit {result['exit']} (expected 130): {result['stderr']}")
        if result["kill"].startswith("none") and result["exit"] == expected:
            found += store_problems(path, store, reference)
            result["round_finished"] = rounds
            rounds += 1
        elif path != "collect" and rng.random() < 0.3:
            result["planted"] = plant(store, rng.choice(PLANTS), work)
        problems += [f"attempt {index + 1} ({store.name}): {problem}" for problem in found]
        attempts.append(result)
        log(f"attempt {index + 1}/{iterations}: " + json.dumps({k: v for k, v in result.items() if k != "stderr"}))
    store = work / f"soaked-{rounds}"
    final = subprocess.run(command(path, store, fast, source), cwd=soak.REPO, capture_output=True, env=soak._env())
    if final.returncode != expected:
        problems.append(f"the final run exited {final.returncode}: {final.stderr.decode(errors='replace')[-300:]}")
    problems += [f"final run ({store.name}): {problem}" for problem in store_problems(path, store, reference)]
    kinds = (*KILLS[path], "SIGKILL main (no job or rank running)", "none (finished first)")
    return {
        "path": path,
        "iterations": iterations,
        "rounds_compared": rounds,
        "fast": fast,
        "seed": seed,
        "reference_s": round(reference_s, 1),
        "kills": {kind: sum(a["kill"] == kind for a in attempts) for kind in kinds},
        "planted": [a["planted"] for a in attempts if "planted" in a],
        "rows": len(soak.comparable_rows(store)),
        "temp_files_left": sorted(str(found.relative_to(work)) for found in work.glob("soaked-*/**/*.tmp")),
        "problems": problems,
        "ok": not problems,
        "total_s": round(time.time() - started, 1),
    }
