"""File locks of the store (``filelock``): the index's, and each run's (review 2, D6).

A lock file sits beside what it guards, never inside a directory that is cleared or replaced while
the lock is held. Locks are advisory and per host filesystem: every writer of the suite takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class Busy(RuntimeError):
    """A lock another process holds, asked for without waiting."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this host, waited for silently (short holds)."""
    with FileLock(str(path)):
        yield


@contextmanager
def hold_all(paths: list[Path], *, wait: bool, on_wait: Callable[[Path], None]) -> Iterator[None]:
    """Hold every lock of ``paths``, taken in the order given (callers give one fixed order, so two
    holders never deadlock) and released in reverse. ``wait``: block, calling ``on_wait`` once first,
    or raise ``Busy`` at once naming the lock that is held."""
    held: list[FileLock] = []
    try:
        for path in paths:
            lock = FileLock(str(path))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not wait:
                    raise Busy(path) from None
                on_wait(path)
                lock.acquire()
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()
