"""The results store: one directory per run and one table of measured numbers.

``results/results.csv`` has one row per measured number (DESIGN §5 columns plus a few for
reproducibility). It is append-only: a run's rows are added once its evaluation is done,
and the only rewrite is ``--force``, which replaces the rows of the run it reruns. Every
write goes to a temp file in the same directory and is renamed over the old file, so a
crash or kill leaves either the old table or the new one, never a torn one.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

import bench
from bench.atomic import write_atomic

HISTORY_NAME = "pretrain_history.csv"
COLUMNS = (
    "run_id", "timestamp", "preset", "method", "dataset", "eval_dataset", "scheme", "attack", "metric", "value",
    "epsilon", "n_eval", "seed", "pretrain_epochs", "finetune_epochs", "config_hash", "code_version",
    "torch_version", "device", "wall_s", "flags",
)


def code_version() -> str:
    """Package version plus git commit (and '+dirty' for uncommitted changes) when in a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    version = f"{bench.__version__}+{commit}" if commit else bench.__version__
    return version + ("-dirty" if dirty else "")


def environment() -> dict[str, str]:
    return {
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (a no-op where fcntl does not exist, e.g. Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsStore:
    """``root/results.csv`` plus ``root/runs/<run_id>/`` (config, history, checkpoints)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.table = self.root / "results.csv"
        self.runs = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        path = self.runs / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_complete(self, run_id: str) -> bool:
        return (self.runs / run_id / "done.json").exists()

    def mark_complete(self, run_id: str, summary: dict[str, Any]) -> None:
        write_atomic(self.run_dir(run_id) / "done.json", json.dumps(summary, indent=2, default=str))

    def read_rows(self) -> list[dict[str, str]]:
        if not self.table.exists():
            return []
        with open(self.table, newline="") as stream:
            return list(csv.DictReader(stream))

    def append(self, rows: Iterable[dict[str, Any]], replace_run: str | None = None) -> None:
        """Add rows (all columns required); ``replace_run`` first drops that run's old rows.

        The read-modify-write holds an exclusive lock (POSIX), so two ``bench`` processes sharing
        a store never drop each other's rows."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".results.lock"):
            self._rewrite(list(rows), replace_run)

    def _rewrite(self, rows: list[dict[str, Any]], replace_run: str | None) -> None:
        existing = [row for row in self.read_rows() if replace_run is None or row["run_id"] != replace_run]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        for row in existing:
            writer.writerow({column: row.get(column, "") for column in COLUMNS})
        for row in rows:
            missing = [column for column in COLUMNS if column not in row]
            if missing:
                raise ValueError(f"result row lacks columns {missing}")
            writer.writerow(row)
        write_atomic(self.table, buffer.getvalue())

    def write_json(self, run_id: str, name: str, payload: Any) -> Path:
        path = self.run_dir(run_id) / name
        write_atomic(path, json.dumps(payload, indent=2, default=str))
        return path

    def write_history(self, run_id: str, history: list[dict[str, Any]]) -> Path:
        """Pretraining curve as CSV (epoch, step, loss, lr, then the method's own logs)."""
        columns: list[str] = []
        for row in history:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns or ["epoch", "step", "loss", "lr"])
        writer.writeheader()
        writer.writerows(history)
        path = self.run_dir(run_id) / HISTORY_NAME
        write_atomic(path, buffer.getvalue())
        return path
