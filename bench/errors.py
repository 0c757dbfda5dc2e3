"""Errors every level may raise, and the "did you mean" hint of their messages.

This module imports nothing of the package (and nothing heavy), so the engine can use it and the
``bench`` command can name every error it reports without loading torch: ``bench --help`` answers
at once. Each class is re-exported where it used to live (``bench.engine.checkpoint_keys``,
``bench.store.results``, …) as the same object, so ``except`` clauses and imports there still work.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable
from pathlib import Path


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming field and allowed values."""


class CheckpointError(ValueError):
    """A checkpoint that does not hold what its format promises (keys, shapes, fields)."""


class DatasetMissingError(RuntimeError):
    """A dataset is not on disk; the message names the directory and the flag to fix it."""


class DownloadError(RuntimeError):
    """A pinned file could not be fetched or is not the pinned file; nothing was kept."""


class DiskFullError(OSError):
    """No space left on the device while writing a stored file. The temp file is removed and the
    previous file is untouched (the rename never happened), so the store stays consistent."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, "no space left on the device", str(path))

    def __reduce__(self):  # pickles (a worker's or a scheduler job's exception) as its path alone
        return (type(self), (Path(self.filename),))

    def __str__(self) -> str:
        return (
            f"no space left on the device while writing {self.filename} (the previous file is intact; "
            "free some space, then rerun with --resume)"
        )


class StoreError(RuntimeError):
    """The store cannot be read or rebuilt safely; the message says which file and what to do."""


class RowError(ValueError):
    """A stored row that cannot be read back as a ``ResultRow``; the message names file and line."""


def closest(value: object, allowed: Iterable[object], n: int = 1, cutoff: float = 0.7) -> list[str]:
    """The ``n`` allowed names nearest to ``value`` (``difflib`` ratio >= ``cutoff``), best first.

    Case is ignored (``slf`` finds ``SLF``) and non-string values are compared as text, so one helper
    serves methods, presets, protocols, schemes, attacks and run ids alike. The cutoff 0.7 keeps a
    one-letter typo of a longer name (``acl-pi``, ``slurn``, ``robusssl``) and drops the near-ties of
    three-letter names: ``ALF`` is not offered ``SLF`` when a compared run lacks ALF."""
    by_folded: dict[str, str] = {}
    for name in allowed:
        by_folded.setdefault(str(name).casefold(), str(name))
    found = difflib.get_close_matches(str(value).casefold(), list(by_folded), n=n, cutoff=cutoff)
    return [by_folded[name] for name in found if by_folded[name] != str(value)]


def did_you_mean(value: object, allowed: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the allowed name nearest to a mistyped ``value``, else ``''``:
    put before the message's ``: allowed …`` list, which can be long (36 methods)."""
    found = closest(value, allowed)
    return f" (did you mean {found[0]!r}?)" if found else ""
