"""Batched, on-device image augmentations, seeded by an explicit generator.

The released codes augment image by image on CPU worker processes; here the whole batch is
augmented on the training device with per-sample random parameters, so data loading is
never the bottleneck on a GPU and a run is reproducible from one generator state.
Colour jitter applies brightness, contrast, saturation and hue in a fixed order (torchvision
shuffles the order per image); hue is rotated in YIQ space, a close linear stand-in for
torchvision's HSV shift. Both differences are documented deviations, not bugs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _bernoulli(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize back.

    Implemented as one affine ``grid_sample`` for the batch (bilinear).
    """
    n, device = x.shape[0], x.device
    area = _uniform(n, scale[0], scale[1], generator, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1 - width) * (2 * torch.rand(n, generator=generator, device=device) - 1)
    centre_y = (1 - height) * (2 * torch.rand(n, generator=generator, device=device) - 1)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_crop_with_padding(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding: integer shifts in [-padding, padding]."""
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    shift_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    shift_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = shift_y[:, None] + torch.arange(height, device=x.device)[None, :]  # [n, H]
    cols = shift_x[:, None] + torch.arange(width, device=x.device)[None, :]  # [n, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    gathered = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return gathered.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = _bernoulli(x.shape[0], p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, replicated over the channels."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    apply = _bernoulli(x.shape[0], p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x), x)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by ``angle`` radians per sample."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype
    )
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = from_yiq @ rotation @ to_yiq  # [n, 3, 3]
    return torch.einsum("nij,njhw->nihw", matrix, x)


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """ColorJitter(b, c, s, h) applied with probability ``p`` per sample."""
    n, device = x.shape[0], x.device
    factor = lambda strength: _uniform(n, 1 - strength, 1 + strength, generator, device).view(-1, 1, 1, 1)
    out = (x * factor(brightness)).clamp(0, 1)
    mean = grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * factor(contrast) + mean).clamp(0, 1)
    gray = grayscale(out)
    out = ((out - gray) * factor(saturation) + gray).clamp(0, 1)
    if x.shape[1] == 3 and hue > 0:
        angle = _uniform(n, -hue, hue, generator, device) * 2 * math.pi
        out = _rotate_hue(out, angle).clamp(0, 1)
    apply = _bernoulli(n, p, generator, device).view(-1, 1, 1, 1)
    return torch.where(apply, out, x)


@dataclass(frozen=True)
class StrongAugment:
    """SimCLR-style view: resized crop, flip, colour jitter, grayscale (all papers here)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(x, self.crop_scale, generator)
        x = random_horizontal_flip(x, generator)
        x = color_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        return random_grayscale(x, self.grayscale_p, generator)


@dataclass(frozen=True)
class WeakAugment:
    """RandomCrop(padding = size/8) + flip: AdvCL's attacked view and finetuning's augmentation."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        padding = max(1, x.shape[-1] // 8)
        return random_horizontal_flip(random_crop_with_padding(x, padding, generator), generator)


def high_frequency_component(x: torch.Tensor, radius: int = 8) -> torch.Tensor:
    """AdvCL's HFC view: zero every centred-FFT frequency within ``radius`` of the centre.

    Per channel: fftshift(fft2), mask distance < radius around (H/2, W/2), inverse, real
    part. Not clamped (the released code feeds negative values to the encoder too).
    """
    height, width = x.shape[-2:]
    # At least float32 (fft has no half-precision CPU kernel), float64 kept: the step-level
    # fidelity tests compare with the released code in float64 (tests/test_fidelity_steps.py).
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(torch.promote_types(x.dtype, torch.float32))), dim=(-2, -1))
    ys = torch.arange(height, device=x.device).view(-1, 1) - height // 2
    xs = torch.arange(width, device=x.device).view(1, -1) - width // 2
    keep = ((ys**2 + xs**2) >= radius**2).to(spectrum.dtype)
    restored = torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1)))
    return restored.real.to(x.dtype)
