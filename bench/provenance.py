"""What produced a number: code version (git commit), library versions, platform, threads.

Kept apart from the store (``bench.results``) so that reading results never imports torch.
"""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import bench


def code_version() -> str:
    """Package version plus git commit (and '-dirty' for uncommitted changes) when in a checkout."""
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
    """The software and machine a run used (recorded in its ``config.json`` and rows)."""
    import torch

    return {
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }


def now() -> str:
    """UTC time stamp, to the second, as every stored file writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
