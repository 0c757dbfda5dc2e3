"""How the processes a launcher starts end with it, and how two of them never do one job at once.

A launcher (``bench sweep --launcher submitit-local``, ``torchrun``, the ``--jobs N`` pool) starts
processes that train and write into the store. Killed from outside (``kill -9``, the OOM killer),
a launcher runs no cleanup, so each started process must notice on its own (review 2, D7):

- ``die_with_parent``: Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), set by the child
  itself: the kernel signals it the moment its parent exits. torchrun's ranks use it (torchrun starts
  them in sessions of their own, so a signal to torchrun's group never reaches them).
- ``exit_when_gone``: for a process that is not our parent (a submitit-local job's parent is
  submitit's controller, the launcher is its grandparent): a daemon thread that waits on a pidfd and
  ends this process once the launcher has exited.
- ``exclusive``: a lock file held with ``flock`` for as long as a job runs. The kernel releases it
  when its holder exits, however it dies, so a rerun that finds it held waits for the writer still
  running instead of training the same run beside it, and never waits for a dead one.

Nothing here imports torch: the pieces are plain process plumbing, shared by every launcher.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL, *, launcher_marks: tuple[bytes, ...] = ()) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux; elsewhere a no-op,
    returns False). SIGKILL by default: a rank blocked in a collective never runs a Python handler.

    A parent already gone counts as gone: the signal is sent at once. The kernel cannot say so, so
    this process judges: its parent changed while the call ran, or (with ``launcher_marks``, words of
    the launcher's command line) it was handed to init (pid 1) and init is not that launcher. That
    closes the gap of a launcher killed while this process was still starting (soak, issue 21)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
    adopted = parent == 1 and bool(launcher_marks) and not any(mark in _cmdline(1) for mark in launcher_marks)
    if os.getppid() != parent or adopted:
        os.kill(os.getpid(), sig)
    return True


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists


def exit_when_gone(pid: int, why: str, *, code: int = 1, interval_s: float = 0.5) -> threading.Thread:
    """End this process (``os._exit(code)``, after one line on stderr) as soon as process ``pid`` exits.

    A pidfd (Linux 5.3+) makes the wait exact and free; elsewhere the thread polls every
    ``interval_s``. The store is safe to leave at any moment: every stored write is atomic."""
    try:
        handle: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        handle = None
        _exit(why, code)
    except (AttributeError, OSError):  # no pidfd here: poll instead
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once the process has exited
        else:
            while process_alive(pid):
                time.sleep(interval_s)
        _exit(why, code)

    thread = threading.Thread(target=watch, name=f"exit-when-{pid}-gone", daemon=True)
    thread.start()
    return thread


def _exit(why: str, code: int) -> None:
    try:
        sys.stderr.write(f"bench: {why}\n")
        sys.stderr.flush()
    finally:
        os._exit(code)


@contextmanager
def exclusive(path: Path, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``path`` (created if missing) as an exclusive lock for the block; waits while another
    process holds it, calling ``waiting(holder)`` once first (``holder``: the pid and host it wrote).

    The lock is the file's ``flock``, which the kernel drops when the holder exits (even by SIGKILL),
    so a stale lock file never blocks anyone; the file itself is left in place (deleting it would
    let a later process lock a new file while an older one still holds the old)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(os.pread(handle, 200, 0).decode(errors="replace").strip() or "unknown")
            fcntl.flock(handle, fcntl.LOCK_EX)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        yield
    finally:
        os.close(handle)  # closing drops the lock


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM while a worker is being started: the child inherits the mask, so a
    Ctrl-C in that moment cannot reach it before ``leave_interrupts_to_parent`` (the parent gets it
    when the block ends)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_interrupts_to_parent() -> None:
    """In a worker its parent stops: Ctrl-C (sent to the whole foreground group) is the parent's to
    handle, and the parent's SIGTERM ends the worker at once, so neither prints the worker's
    traceback (review 2, D10). Then lets the signals ``stop_signals_held`` held back through."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
