"""Write ``bench/engine/digits.npz``, the embedded default dataset, from scikit-learn's bundled copy.

The UCI handwritten digits (Alpaydin & Kaynak 1998, CC BY 4.0): 1,797 images of 8×8 pixels in 0..16 and
their labels, stored as uint8 (exact: every value is a whole number). Run it only to regenerate the file;
``tests/test_data.py`` checks the stored arrays equal ``sklearn.datasets.load_digits`` on every run.

    python scripts/make_digits.py
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from bench.engine.data import DIGITS_FILE


def main() -> None:
    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.uint8)
    if not (np.array_equal(images, digits.images) and np.array_equal(labels, digits.target)):
        raise SystemExit("scikit-learn's digits are no longer whole numbers in 0..255: uint8 would change them")
    np.savez_compressed(DIGITS_FILE, images=images, labels=labels)
    print(f"wrote {DIGITS_FILE} ({DIGITS_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
