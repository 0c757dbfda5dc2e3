"""The embedded digits (``bench/engine/digits.npz``): the same arrays as scikit-learn's, loaded without it."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from processes import run_forked

from bench.engine.data import digits_arrays, load_digits


def test_the_embedded_digits_are_scikit_learns():
    from sklearn.datasets import load_digits as sklearn_digits

    reference = sklearn_digits()
    images, labels = digits_arrays()
    assert images.dtype == labels.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)


def test_the_split_is_fixed_by_the_seed_and_covers_every_image_once():
    first, again, other = load_digits(16), load_digits(16), load_digits(16, seed=1)
    assert first.x_train.shape == (1438, 3, 16, 16) and first.x_test.shape == (359, 3, 16, 16)
    assert first.x_train.dtype.is_floating_point is False and first.num_classes == 10
    assert np.array_equal(first.y_test.numpy(), again.y_test.numpy())
    assert not np.array_equal(first.y_test.numpy(), other.y_test.numpy())
    assert sorted(np.bincount(np.concatenate([first.y_train.numpy(), first.y_test.numpy()]))) == sorted(
        np.bincount(digits_arrays()[1])
    )


def _loads_scikit_learn() -> bool:
    """In a forked child: forget every module but the standard library's, torch's and numpy's, import the data
    module anew, load the digits, and say whether scikit-learn came in (a new interpreter would spend 3 s of
    CPU importing torch first; any other package the loading imports, and what it imports, runs anew here)."""
    kept = set(sys.stdlib_module_names) | {"torch", "torchgen", "functorch", "numpy"}
    for name in [name for name in sys.modules if name.partition(".")[0] not in kept]:
        del sys.modules[name]
    from bench.engine.data import load_digits as anew

    anew(16)
    return "sklearn" in sys.modules


@pytest.mark.e2e  # forks a process
def test_loading_the_digits_imports_no_scikit_learn():
    """Every run, stage job, DDP rank and worker loads the digits: scikit-learn's import cost each about 2 s."""
    _, status = os.waitpid(run_forked(lambda: 2 if _loads_scikit_learn() else 0), 0)
    assert os.waitstatus_to_exitcode(status) == 0, "loading the digits imported scikit-learn (2) or failed (1)"
