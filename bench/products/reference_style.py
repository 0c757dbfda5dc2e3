"""The released pipelines' data path, for ``bench speed``'s reference-style path.

The released codes augment image by image with torchvision's PIL transforms in DataLoader worker
processes (LijieFan/AdvCL pretraining_advCL.py with ``TwoCropTransformAdv``, Kim-Minseon/RoCL
data_loader.py, VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py). Here the same
transforms, built from a method's view recipes (``bench.engine.views``), feed the method's own step through
``ReplayAugment``, which stands in for its ``augment``/``weak_augment``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from bench.engine.views import StrongAugment, WeakAugment
from bench.methodkit.method import Method


def pil_transform(augment: Any, size: int):
    """The torchvision (PIL) transform a released loader applies for one of our view recipes,
    or None when the recipe has no released counterpart (a plugin's own augmentation)."""
    import torchvision.transforms as T

    if isinstance(augment, StrongAugment):
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=augment.crop_scale),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(*augment.jitter)], p=augment.jitter_p),
                T.RandomGrayscale(p=augment.grayscale_p),
                T.ToTensor(),
            ]
        )
    if isinstance(augment, WeakAugment):
        return T.Compose([T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip(), T.ToTensor()])
    return None


class PILViews(torch.utils.data.Dataset):
    """Per image: PIL decode, then two strong views (and a weak one), as the released datasets
    return them (AdvCL's ``TwoCropTransformAdv``, RoCL's ``(ori, x1, x2)``, ACL's pair)."""

    def __init__(self, images: torch.Tensor, strong, weak):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC uint8, as torchvision's CIFAR
        self.strong, self.weak = strong, weak

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        from PIL import Image

        array = self.images[index]
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        views = [self.strong(image), self.strong(image)] + ([self.weak(image)] if self.weak is not None else [])
        return index, views


class ReplayAugment:
    """Stands in for a method's ``augment`` on the reference-style path: the k-th call with shard
    s's generator returns rows of shard s of the k-th loader view (any call order works)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators, self.views, self.calls = generators, [], [0] * len(generators)

    def load(self, views: list[torch.Tensor]) -> None:
        self.views, self.calls = views, [0] * len(self.generators)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shard = next(index for index, known in enumerate(self.generators) if known is generator)
        call = self.calls[shard]
        if call >= len(self.views):
            raise RuntimeError(
                f"reference-style path: the method asked for view {call + 1} but the released "
                f"loaders give {len(self.views)}"
            )
        self.calls[shard] += 1
        rows = x.shape[0]
        return self.views[call][shard * rows : (shard + 1) * rows]


def reference_batches(
    images: torch.Tensor, method: Method, batch: int, workers: int, device: torch.device, seed: int
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]] | None:
    """Endless (indices, views) batches from a shuffling DataLoader with PIL views, or None."""
    size = images.shape[-1]
    strong = pil_transform(getattr(method, "augment", None), size)
    weak_recipe = getattr(method, "weak_augment", None)
    weak = pil_transform(weak_recipe, size) if weak_recipe is not None else None
    if strong is None or (weak_recipe is not None and weak is None):
        return None
    loader = torch.utils.data.DataLoader(
        PILViews(images.cpu(), strong, weak),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )

    def endless():
        while True:
            for indices, views in loader:
                yield indices.to(device), [view.to(device, non_blocking=True) for view in views]

    return endless()
