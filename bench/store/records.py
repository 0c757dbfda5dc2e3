"""Per-image correctness of one evaluation: which test images each attack left correctly classified.

Accuracies alone cannot be compared *paired*; these records can (bench.products.stats.compare_paired):
two classifiers evaluated on the same test indices are compared image by image. One record is
a NumPy ``.npz`` holding

- ``format_version`` (int64 scalar, currently 1),
- ``indices`` (int64 [n]: the evaluated indices into the test split, unique),
- ``attacks`` (unicode [a]: attack names, e.g. ``clean``, ``pgd20``, ``autoattack``,
  ``corruption:fog:3``),
- ``bits`` (uint8 [a, ceil(n / 8)]: ``numpy.packbits`` of each attack's correctness along the
  images, big-endian bit order, zero padding),
- ``meta`` (unicode scalar: JSON of caller-supplied scalars, e.g. the eval seed or ε).

No pickled objects: it loads with ``allow_pickle=False``. 10,000 images × 3 attacks is ~20 KB
(compressed; the indices dominate).
Files are written atomically (bench.store.atomic.atomic_write).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.store.atomic import atomic_write

FORMAT_VERSION = 1
_KEYS = {"format_version", "indices", "attacks", "bits", "meta"}


class RecordError(ValueError):
    """A record file is missing, unreadable or malformed; the message is one line naming the file."""


class Record(NamedTuple):
    indices: np.ndarray  # int64 [n]
    correct: dict[str, np.ndarray]  # attack → bool [n], aligned with indices
    meta: dict


def _as_correct(name: str, values, n: int) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype != np.bool_ or array.shape != (n,):
        raise ValueError(
            f"correct[{name!r}] of dtype {array.dtype} and shape {array.shape} is invalid: "
            f"allowed a boolean array of shape ({n},)"
        )
    return array


def write_record(
    path: str | os.PathLike, indices, correct: Mapping[str, object], meta: Mapping[str, object] | None = None
) -> Path:
    """Store the per-image correctness of every attack of one evaluation (atomically)."""
    if hasattr(indices, "detach"):
        indices = indices.detach().cpu().numpy()
    index_array = np.asarray(indices)
    if index_array.ndim != 1 or not np.issubdtype(index_array.dtype, np.integer):
        raise ValueError(
            f"indices of dtype {index_array.dtype} and shape {index_array.shape} is invalid: "
            "allowed a 1-D integer array"
        )
    if np.unique(index_array).size != index_array.size or (index_array.size and index_array.min() < 0):
        raise ValueError("indices is invalid: allowed unique, non-negative test indices")
    if not correct:
        raise ValueError("correct={} is invalid: allowed at least one attack")
    names = list(correct)
    bits = np.stack([np.packbits(_as_correct(name, correct[name], index_array.size)) for name in names])
    payload = {
        "format_version": np.int64(FORMAT_VERSION),
        "indices": index_array.astype(np.int64),
        "attacks": np.array(names, dtype=np.str_),
        "bits": bits.astype(np.uint8),
        "meta": np.array(json.dumps(dict(meta or {}), sort_keys=True)),
    }
    return atomic_write(path, lambda stream: np.savez_compressed(stream, **payload), verify=read_record)


def read_record(path: str | os.PathLike) -> Record:
    """Load a record; any defect raises RecordError with one line naming the file and the defect."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise RecordError(f"record {path} is malformed: a single array, not an .npz archive")
        with loaded as archive:
            if set(archive.files) != _KEYS:
                raise RecordError(f"record {path} is malformed: keys {sorted(archive.files)}, expected {sorted(_KEYS)}")
            arrays = {key: archive[key] for key in _KEYS}
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(f"record {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise RecordError(f"record {path} is not a readable .npz without pickles: {error}") from None
    return _validated(path, arrays)


def _validated(path: Path, arrays: dict[str, np.ndarray]) -> Record:
    def bad(reason: str) -> RecordError:
        return RecordError(f"record {path} is malformed: {reason}")

    version = arrays["format_version"]
    if version.shape != () or int(version) != FORMAT_VERSION:
        raise bad(f"format_version {version.tolist()}, this code reads {FORMAT_VERSION}")
    indices, attacks, bits = arrays["indices"], arrays["attacks"], arrays["bits"]
    if indices.ndim != 1 or indices.dtype != np.int64 or np.unique(indices).size != indices.size:
        raise bad(f"indices must be unique int64 [n], got {indices.dtype} {indices.shape}")
    if attacks.ndim != 1 or attacks.dtype.kind != "U" or np.unique(attacks).size != attacks.size:
        raise bad(f"attacks must be unique names [a], got {attacks.dtype} {attacks.shape}")
    expected = (attacks.size, (indices.size + 7) // 8)
    if bits.dtype != np.uint8 or bits.shape != expected:
        raise bad(f"bits must be uint8 {expected}, got {bits.dtype} {bits.shape}")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as error:
        raise bad(f"meta is not JSON ({error.msg})") from None
    correct = {str(name): np.unpackbits(row, count=indices.size).astype(bool) for name, row in zip(attacks, bits)}
    return Record(indices, correct, meta)


def accuracy(record: Record, attack: str) -> float:
    """Accuracy in % of one attack of a record."""
    if attack not in record.correct:
        raise ValueError(f"attack={attack!r} is invalid: allowed {sorted(record.correct)}")
    return 100.0 * float(record.correct[attack].mean())


def paired(base: Record, variant: Record, attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image correctness of two records on their common test indices: (indices, base, variant)."""
    for name, record in (("base", base), ("variant", variant)):
        if attack not in record.correct:
            raise ValueError(f"attack={attack!r} is invalid for the {name} record: allowed {sorted(record.correct)}")
    common, in_base, in_variant = np.intersect1d(base.indices, variant.indices, assume_unique=True, return_indices=True)
    if common.size == 0:
        raise ValueError("the two records share no test index: they were evaluated on different images")
    return common, base.correct[attack][in_base], variant.correct[attack][in_variant]
