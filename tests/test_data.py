"""The embedded digits (``bench/engine/digits.npz``): the same arrays as scikit-learn's, loaded without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.engine.data import digits_arrays, load_digits

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.e2e  # starts a Python process
def test_loading_the_digits_imports_no_scikit_learn():
    """Every run, stage job, DDP rank and worker loads the digits: scikit-learn's import cost each about 2 s."""
    code = "import sys; from bench.engine.data import load_digits; load_digits(16); print('sklearn' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
