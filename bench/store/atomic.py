"""Crash-safe file writes: a temp file in the target's directory, fsync, then a rename.

The rename is atomic on one filesystem, so readers see the old file or the complete new
one, never a torn write; on any failure (Ctrl-C included) the temp file is removed and the
previous file is untouched. Every stored result, report and checkpoint goes through here.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bench.errors import DiskFullError


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX); harmless elsewhere."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], None], verify: Callable[[Path], None] | None = None
) -> Path:
    """Call ``write`` on a temp file beside ``path``, optionally ``verify`` it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if verify is not None:
            verify(temp)
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path) from error
        raise
    _fsync_directory(path.parent)
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8, newlines as given) or bytes atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_write(path, lambda stream: stream.write(payload))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that never leaves a truncated file (checkpoints, classifiers).

    The archive is built in memory first: torch's zip writer reports a full disk as an opaque
    ``RuntimeError`` (``unexpected pos``), while a plain write raises ``OSError(ENOSPC)``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda stream: stream.write(buffer.getbuffer()))
