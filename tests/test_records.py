"""Per-image correctness records: round trip, pairing, and one-line errors for malformed files."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from bench.store.records import FORMAT_VERSION, RecordError, accuracy, paired, read_record, write_record


def _example(n: int = 13, seed: int = 0):
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(50000, size=n, replace=False))
    correct = {"clean": rng.random(n) < 0.9, "pgd20": rng.random(n) < 0.5, "corruption:fog:3": rng.random(n) < 0.7}
    return indices, correct


@pytest.mark.parametrize("n", [0, 1, 8, 13, 10000])
def test_round_trip(tmp_path, n):
    indices, correct = _example(n)
    path = write_record(tmp_path / "run" / "correct_slf.npz", indices, correct, meta={"seed": 3, "epsilon": 0.1})
    record = read_record(path)
    assert record.indices.dtype == np.int64 and np.array_equal(record.indices, indices)
    assert list(record.correct) == list(correct)
    for name, values in correct.items():
        assert record.correct[name].dtype == np.bool_ and np.array_equal(record.correct[name], values)
    assert record.meta == {"seed": 3, "epsilon": 0.1}
    with np.load(path, allow_pickle=False) as archive:  # plain arrays only
        assert int(archive["format_version"]) == FORMAT_VERSION
        assert archive["bits"].shape == (3, (n + 7) // 8)
    assert [p.name for p in path.parent.iterdir()] == ["correct_slf.npz"]  # no temp file left behind


def test_accepts_torch_tensors_and_gives_accuracy(tmp_path):
    correct = torch.tensor([True, False, True, True])
    record = read_record(write_record(tmp_path / "r.npz", torch.arange(4), {"clean": correct}))
    assert accuracy(record, "clean") == 75.0
    with pytest.raises(ValueError, match="attack='pgd20' is invalid: allowed \\['clean'\\]"):
        accuracy(record, "pgd20")


def test_compact_for_a_full_test_set(tmp_path):
    indices, correct = _example(10000)
    assert write_record(tmp_path / "r.npz", indices, correct).stat().st_size < 20000


def test_bad_input_is_refused_before_writing(tmp_path):
    path = tmp_path / "r.npz"
    with pytest.raises(ValueError, match="correct\\['clean'\\] of dtype int64 and shape \\(3,\\) is invalid"):
        write_record(path, [1, 2, 3], {"clean": np.array([1, 0, 1])})
    with pytest.raises(ValueError, match="shape \\(2,\\) is invalid: allowed a boolean array of shape \\(3,\\)"):
        write_record(path, [1, 2, 3], {"clean": np.array([True, False])})
    with pytest.raises(ValueError, match="indices is invalid: allowed unique"):
        write_record(path, [1, 1, 3], {"clean": np.array([True, False, True])})
    assert not path.exists()


def _write_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def _valid_arrays():
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "indices": np.arange(3, dtype=np.int64),
        "attacks": np.array(["clean"]),
        "bits": np.packbits(np.array([[True, False, True]]), axis=1),
        "meta": np.array("{}"),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": np.int64(99)}, "format_version 99, this code reads 1"),
        ({"bits": np.zeros((1, 5), dtype=np.uint8)}, "bits must be uint8 \\(1, 1\\)"),
        ({"indices": np.array([0, 0, 1], dtype=np.int64)}, "indices must be unique int64"),
        ({"attacks": np.array(["clean", "clean"]), "bits": np.zeros((2, 1), dtype=np.uint8)}, "attacks must be unique"),
        ({"meta": np.array("{not json")}, "meta is not JSON"),
        ({"extra": np.zeros(1)}, "keys \\["),
    ],
)
def test_malformed_files_fail_with_one_line(tmp_path, change, message):
    arrays = {**_valid_arrays(), **change}
    path = _write_npz(tmp_path / "r.npz", **arrays)
    read_record(_write_npz(tmp_path / "ok.npz", **_valid_arrays()))  # the unchanged file is valid
    with pytest.raises(RecordError, match=message) as error:
        read_record(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_unreadable_files_fail_with_one_line(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        read_record(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(RecordError, match="not a readable .npz"):
        read_record(garbage)
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as archive:  # an object array needs pickle to load: refused
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        archive.writestr("indices.npy", buffer.getvalue())
    with pytest.raises(RecordError, match="pickled.npz"):
        read_record(pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(RecordError, match="a single array"):
        read_record(single)


def test_paired_aligns_on_common_indices(tmp_path):
    base = read_record(write_record(tmp_path / "a.npz", [5, 1, 9], {"clean": np.array([True, False, True])}))
    variant = read_record(write_record(tmp_path / "b.npz", [9, 5, 7], {"clean": np.array([False, True, True])}))
    common, base_correct, variant_correct = paired(base, variant, "clean")
    assert common.tolist() == [5, 9]
    assert base_correct.tolist() == [True, True] and variant_correct.tolist() == [True, False]
    other = read_record(write_record(tmp_path / "c.npz", [100], {"clean": np.array([True])}))
    with pytest.raises(ValueError, match="share no test index"):
        paired(base, other, "clean")
