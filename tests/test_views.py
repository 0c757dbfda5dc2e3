"""Augmentations: shapes, range, determinism under a seed, and the HFC definition."""

from __future__ import annotations

import torch

from bench.engine.views import StrongAugment, WeakAugment, high_frequency_component, random_crop_with_padding


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_views_are_seeded_and_in_range():
    x = torch.rand(8, 3, 16, 16)
    for augment in (StrongAugment(), WeakAugment()):
        a, b = augment(x, _generator(1)), augment(x, _generator(1))
        assert a.shape == x.shape and torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, augment(x, _generator(2)))


def test_random_crop_is_an_integer_shift_with_zero_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = random_crop_with_padding(x, 1, _generator(3))
    values = set(out.flatten().tolist())
    assert values <= set(x.flatten().tolist()) | {0.0}


def test_hfc_removes_low_frequencies():
    constant = torch.full((1, 3, 32, 32), 0.7)
    assert high_frequency_component(constant).abs().max() < 1e-5  # DC is inside the radius
    checker = (torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2
    image = checker.float().expand(1, 3, 32, 32)
    hfc = high_frequency_component(image)
    assert torch.allclose(hfc, image - 0.5, atol=1e-5)  # Nyquist survives, the mean does not
