"""What produced a number: code version (git commit), library versions, platform, threads.

Kept apart from the store (``bench.store.results``) so that reading results never imports torch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import bench


def code_version() -> str:
    """Package version plus git commit (and '-dirty' for uncommitted changes) when in a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    version = f"{bench.__version__}+{commit}" if commit else bench.__version__
    return version + ("-dirty" if dirty else "")


def scheduler_job() -> tuple[str, str]:
    """(scheduler, job id) of the job this process runs in, from the scheduler's environment:
    SLURM (``<array job>_<task>`` for an array task), submitit's local executor, or ('', '')."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return "slurm", f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm", os.environ["SLURM_JOB_ID"]
    if os.environ.get("SUBMITIT_LOCAL_JOB_ID"):
        return "submitit-local", os.environ["SUBMITIT_LOCAL_JOB_ID"]
    return "", ""


def world_size() -> int:
    """Processes taking part in the run: torch.distributed's when initialised, else the launcher's
    (torchrun's WORLD_SIZE, SLURM's SLURM_NTASKS), else 1."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def environment(device=None) -> dict[str, str]:
    """The software and machine a run used (recorded in its ``config.json`` and rows): versions,
    host, scheduler job, world size, and the GPU's name when ``device`` is a CUDA device."""
    import torch

    scheduler, job_id = scheduler_job()
    env = {
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
        "hostname": socket.gethostname(),
        "scheduler": scheduler,
        "job_id": job_id,
        "world_size": str(world_size()),
    }
    if device is not None and torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def now() -> str:
    """UTC time stamp, to the second, as every stored file writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_digest(path: Path) -> str:
    """Short sha256 of a file's bytes: what identifies a file a run reads (a teacher, an imported checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
