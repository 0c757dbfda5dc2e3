"""Where runs execute: the device policy (``--device auto``) and the CPU cores available."""

from __future__ import annotations

import os

import torch

from bench.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid here: no CUDA device is available; allowed 'auto' or 'cpu'")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
