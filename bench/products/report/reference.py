"""Published reference numbers (``results/reference/*.csv``), read in priority order.

Each file is in the long format (method, dataset, eval_dataset, scheme, attack, metric, value,
source, note); ``results/reference/README.md`` says where each comes from, and
``results/reference/convert_leaderboard.py`` rebuilds the RobustSSL leaderboard file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

REFERENCE_PRIORITY = ("ainfonce_table1.csv", "author_quoted.csv", "robustssl_leaderboard.csv")
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
UNSPECIFIED_AINFONCE = "a-infonce (unspecified variant)"  # the leaderboard's A-InfoNCE row names no variant


def resolve_reference_dir(reference_dir: str | Path | None) -> Path | None:
    """The given directory if it holds reference CSVs, else the repository's ``results/reference``."""
    for candidate in (reference_dir, DEFAULT_REFERENCE_DIR):
        if candidate is not None and any(Path(candidate).glob("*.csv")):
            return Path(candidate)
    return None


def load_reference(reference_dir: str | Path | None) -> list[dict[str, Any]]:
    """Published numbers from ``*.csv``, each row with its ``file``.

    Files are read in priority order (the A-InfoNCE paper's own table if ever added, author-quoted
    numbers, then the RobustSSL leaderboard), so the first match for a cell is the preferred one.
    """
    directory = resolve_reference_dir(reference_dir)
    if directory is None:
        return []
    rank = {name: index for index, name in enumerate(REFERENCE_PRIORITY)}
    rows = []
    for path in sorted(directory.glob("*.csv"), key=lambda path: (rank.get(path.name, len(rank)), path.name)):
        with open(path, newline="") as stream:
            for line, raw in enumerate(csv.DictReader(stream), start=2):
                try:
                    rows.append({**raw, "value": float(raw["value"]), "file": path.name})
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"{path}:{line}: bad reference row ({error})") from None
    return rows
