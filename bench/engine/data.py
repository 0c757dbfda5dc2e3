"""Dataset registry: the embedded default (digits), CIFAR-10/100(-C), STL-10 and image folders.

Every dataset is held in memory as uint8 tensors [N, C, H, W] and converted to float in
[0, 1] per batch on the training device. The embedded ``digits`` dataset is the UCI handwritten
digits as scikit-learn bundles them (1,797 real 8×8 images; Alpaydin & Kaynak 1998, CC BY 4.0), kept
beside this module as ``digits.npz`` (45 KB, written by ``scripts/make_digits.py``, equal to
``sklearn.datasets.load_digits`` by a test), so the default run needs no network and no scikit-learn:
importing scikit-learn cost every run, stage job and DDP rank about 2 s of CPU.
The torchvision datasets keep their real download path (``--download``) for users; tests
never call it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.choices import DATASETS
from bench.errors import DatasetMissingError


@dataclass
class ImageData:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
        )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return images.float().div_(255.0)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images resized to size × size (antialiased bilinear, rounded); unchanged when already that size."""
    return _resize_uint8(images, size)


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


DIGITS_FILE = Path(__file__).with_name("digits.npz")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits as stored: images uint8 [1797, 8, 8] in 0..16, labels uint8 [1797]."""
    with np.load(DIGITS_FILE, allow_pickle=False) as stored:
        return stored["images"], stored["labels"]


def load_digits(image_size: int = 16, seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """The embedded digits, resized to ``image_size``, 3 channels, fixed seeded split."""
    raw_images, raw_labels = digits_arrays()
    images = torch.from_numpy(raw_images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    images = (images * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    images = _resize_uint8(images, image_size)
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return ImageData("digits", images[train].contiguous(), labels[train], images[test].contiguous(), labels[test], 10)


def _missing(name: str, root: Path) -> DatasetMissingError:
    return DatasetMissingError(
        f"dataset {name!r} not found in {root}: pass --download to fetch it, or --data-dir to point at it"
    )


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tv

    try:
        if name == "cifar10":
            return tv.CIFAR10(str(root), train=train, download=download)
        if name == "cifar100":
            return tv.CIFAR100(str(root), train=train, download=download)
        return tv.STL10(str(root), split="train" if train else "test", download=download)
    except RuntimeError as error:
        if "not found" in str(error).lower() or "download=True" in str(error):
            raise _missing(name, root) from None
        raise


def _as_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.asarray(split.data)
    if images.shape[-1] == 3:  # CIFAR stores NHWC, STL-10 stores NCHW
        images = images.transpose(0, 3, 1, 2)
    labels = np.asarray(getattr(split, "targets", None) if hasattr(split, "targets") else split.labels)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def load_torchvision(name: str, root: Path, download: bool, image_size: int | None) -> ImageData:
    x_train, y_train = _as_tensors(_torchvision_split(name, root, True, download))
    x_test, y_test = _as_tensors(_torchvision_split(name, root, False, download))
    if image_size:
        x_train, x_test = _resize_uint8(x_train, image_size), _resize_uint8(x_test, image_size)
    num_classes = {"cifar10": 10, "cifar100": 100, "stl10": 10}[name]
    return ImageData(name, x_train, y_train, x_test, y_test, num_classes)


def load_image_folder(root: Path, image_size: int) -> ImageData:
    """A local dataset laid out as ``root/train/<class>/*`` and ``root/test/<class>/*``."""
    from torchvision.datasets import ImageFolder

    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DatasetMissingError(f"image folder {root} needs train/ and test/ sub-folders: fix --data-dir")
    splits = []
    for split in ("train", "test"):
        folder = ImageFolder(str(root / split))
        images = [torch.from_numpy(np.array(folder.loader(path).convert("RGB"))) for path, _ in folder.samples]
        stacked = torch.stack([_resize_uint8(img.permute(2, 0, 1)[None], image_size)[0] for img in images])
        splits.append((stacked, torch.tensor([label for _, label in folder.samples])))
    (x_train, y_train), (x_test, y_test) = splits
    return ImageData(root.name, x_train, y_train, x_test, y_test, len(ImageFolder(str(root / "train")).classes))


# Evaluation datasets with common corruptions: the clean dataset (finetuning, SA / PGD / AA) plus the
# official CIFAR-10-C / CIFAR-100-C files (Hendrycks & Dietterich, ICLR 2019) in the data directory,
# which bench.evaluation.corruption_eval reads; never downloaded here.
CORRUPTED_DATASETS = {"cifar10c": "cifar10", "cifar100c": "cifar100"}
CORRUPTED_FOLDERS = {"cifar10c": "CIFAR-10-C", "cifar100c": "CIFAR-100-C"}


def load_dataset(name: str, data_dir: str | Path, download: bool = False, image_size: int | None = None) -> ImageData:
    """Load a registered dataset by name; ``image_size`` resizes (STL-10 transfer, digits)."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown: allowed {sorted(DATASETS)}")
    root = Path(data_dir).expanduser()
    if name == "digits":
        return load_digits(image_size or 16)
    if name == "folder":
        return load_image_folder(root, image_size or 32)
    if name in CORRUPTED_DATASETS:
        return load_corrupted(name, root, download, image_size)
    return load_torchvision(name, root, download, image_size)


def load_corrupted(name: str, root: Path, download: bool, image_size: int | None) -> ImageData:
    """``cifar10c`` / ``cifar100c``: the clean dataset under this name, once the official files are in place
    (checked here, before any finetuning; the corruptions themselves are read per severity at evaluation)."""
    labels = root / CORRUPTED_FOLDERS[name] / "labels.npy"
    if not labels.is_file():
        raise DatasetMissingError(
            f"{labels} not found: put the official {CORRUPTED_FOLDERS[name]} files (Zenodo) "
            f"in {labels.parent} (never downloaded), or evaluate on "
            f"{CORRUPTED_DATASETS[name]} with --set evaluate.corruptions=regenerated"
        )
    clean = load_torchvision(CORRUPTED_DATASETS[name], root, download, image_size)
    return ImageData(name, clean.x_train, clean.y_train, clean.x_test, clean.y_test, clean.num_classes)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, drop_last: bool) -> Iterator[torch.Tensor]:
    """A seeded permutation of range(n), cut into batches."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Pretraining drops the last incomplete batch (BN and in-batch negatives need full batches)."""
    return max(1, n // batch_size)
