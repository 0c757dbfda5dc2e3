"""Common corruptions (CIFAR-10-C / CIFAR-100-C): the official files, or a seeded regeneration.

Official data (Hendrycks & Dietterich, ICLR 2019): ``<data_dir>/CIFAR-10-C/<corruption>.npy``
(50,000 uint8 images, NHWC = 5 severities × 10,000 test images, severity 1 first) and
``labels.npy``; the same for ``CIFAR-100-C``. ``load_cifar_c`` reads one (corruption, severity)
slice; nothing is ever downloaded.

Regeneration: the recipe of hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``
(Apache-2.0, © Dan Hendrycks; its constants and operation order are used here, the code is our
own) for the 15 benchmark corruptions × 5 severities, on a batch of images in [0, 1] of any size,
on the images' device, from a seeded generator (the original draws from NumPy's global RNG, so
no regeneration reproduces the files sample by sample: results on regenerated data must be
labelled "regenerated"). Rows computed on them should say so, and say which corruptions are
approximations: ``CORRUPTIONS[name].approximate`` with ``.note`` giving the reason.

- Constants in pixels (blur radii and σ, glass-blur shifts, motion-blur radii) are kept in pixels:
  at 32 px they are the CIFAR recipe; at other sizes the corruption is relatively weaker/stronger.
  Constants tied to the image size in the recipe (elastic: ×32, pixelate: 32·c, fog's 32-px fractal,
  the 32-px frost crop) follow the actual size.
- Outputs are quantised to 8 bits as the recipe's ``np.uint8(...)`` does (truncation, after adding
  1e-4 levels so that float32 noise does not push an exact level one down), or come from Pillow's
  8-bit output (JPEG, pixelate). Fidelity to the released code, corruption by corruption, is
  measured in docs/corruptions.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.engine import corruption_ops as ops
from bench.engine.data import DatasetMissingError

SEVERITIES = (1, 2, 3, 4, 5)
Operation = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    name: str
    constants: tuple  # one entry per severity, as in make_cifar_c.py
    apply: Operation  # (images in [0, 1], constant, CPU generator) → corrupted, before quantisation
    rounding: str = "floor"  # how the recipe's last step quantises to 8 bits: 'floor' (np.uint8) or 'round'
    approximate: bool = False
    note: str = ""


def _power_of_two(size: int) -> int:
    """The fractal's map size: the smallest power of two ≥ the image (32 for CIFAR, as the recipe)."""
    return max(2, 1 << (size - 1).bit_length())


def _rand(generator: torch.Generator, shape, images: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(images)


def _gaussian_noise(x, sigma, generator):
    return x + sigma * torch.randn(x.shape, generator=generator).to(x)


def _shot_noise(x, photons, generator):
    return torch.poisson(x.detach().cpu().double() * photons, generator=generator).to(x) / photons


def _impulse_noise(x, amount, generator):
    """skimage.util.random_noise(mode='s&p', amount): each value independently flipped with
    probability ``amount``, to 1 or 0 with equal probability."""
    flipped = _rand(generator, x.shape, x) < amount
    salted = _rand(generator, x.shape, x) < 0.5
    return torch.where(flipped, salted.to(x), x)


def _defocus_blur(x, constant, generator):
    radius, alias_blur = constant
    return ops.correlate(x, ops.disk_kernel(radius, alias_blur), "reflect101")


def _glass_blur(x, constant, generator):
    """Gaussian blur (skimage, mode 'nearest'), 8-bit truncation, local pixel moves, blur again.

    The recipe's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on NumPy row views, so it
    copies x[h', w'] into x[h, w] and leaves x[h', w'] unchanged. With shifts drawn from
    randint(−1, 1) ∈ {−1, 0} and positions visited from the bottom-right, every source is read before
    it is written, so one iteration is exactly x[h, w] ← x[h + dy, w + dx] for 2 ≤ h, w ≤ size − 1."""
    sigma, max_delta, iterations = constant
    if max_delta != 1:
        raise ValueError(f"glass_blur max_delta={max_delta!r} is invalid: allowed 1 (the CIFAR constants)")
    x = torch.floor(ops.gaussian_filter(x, sigma, "nearest") * 255 + 1e-4) / 255
    batch, _, height, width = x.shape
    rows = torch.arange(2, height, device=x.device)
    cols = torch.arange(2, width, device=x.device)
    index = torch.arange(batch, device=x.device)[:, None, None]
    for _ in range(iterations):
        shifts = torch.randint(-1, 1, (batch, 2, rows.numel(), cols.numel()), generator=generator).to(x.device)
        source_rows = rows[None, :, None] + shifts[:, 1]
        source_cols = cols[None, None, :] + shifts[:, 0]
        moved = x[index, :, source_rows, source_cols].permute(0, 3, 1, 2)
        x = x.clone()
        x[:, :, 2:, 2:] = moved
    return ops.gaussian_filter(x, sigma, "nearest")


def _motion_blur(x, constant, generator):
    radius, sigma = constant
    angles = torch.rand(x.shape[0], generator=generator) * 90 - 45
    x = torch.round(x * 255) / 255  # the recipe hands ImageMagick an 8-bit PNG
    return ops.motion_blur(x, radius, sigma, angles)


def _zoom_blur(x, factors, generator):
    out = torch.zeros_like(x)
    for factor in factors:
        out += ops.clipped_zoom(x, float(factor))
    return (x + out) / (len(factors) + 1)


def _snow(x, constant, generator):
    mean, std, zoom, threshold, radius, sigma, keep = constant
    batch, _, height, width = x.shape
    layer = (mean + std * torch.randn((batch, 1, height, width), generator=generator)).to(x)
    layer = ops.clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255  # astype(np.uint8) before the PNG
    angles = torch.rand(batch, generator=generator) * 90 - 135
    layer = torch.floor(ops.motion_blur(layer, radius, sigma, angles) * 255 + 1e-4).clamp(0, 255) / 255
    x = keep * x + (1 - keep) * torch.maximum(x, ops.grayscale(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def _frost(x, constant, generator):
    """Approximation: the recipe adds a random crop of one of five frost photographs (frost1-5,
    shipped with hendrycks/robustness, not with this suite); here the added layer is a procedural
    ice-like texture (a rough plasma fractal, bright, blue-tinted) on the recipe's weights."""
    weight_image, weight_frost = constant
    batch, channels, height, width = x.shape
    texture = ops.plasma_fractal(batch, _power_of_two(height), 1.5, generator)[:, None, :height, :width].to(x)
    tint = torch.tensor([0.86, 0.93, 1.0] if channels == 3 else [0.93] * channels).to(x)
    frost_layer = (0.3 + 0.6 * texture) * tint[None, :, None, None]
    return weight_image * x + weight_frost * frost_layer


def _fog(x, constant, generator):
    strength, wibble_decay = constant
    batch, _, height, width = x.shape
    fractal = ops.plasma_fractal(batch, _power_of_two(height), wibble_decay, generator)[:, None, :height, :width]
    fractal = fractal.to(x)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


def _brightness(x, shift, generator):
    """skimage rgb2hsv → V + shift (clipped) → hsv2rgb, in closed form: with hue and saturation fixed,
    every channel scales with V (a black pixel, saturation 0, becomes grey V')."""
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(0, 1)
    return torch.where(value > 0, x * brighter / value.clamp_min(1e-12), brighter.expand_as(x))


def _contrast(x, factor, generator):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * factor + means


def _elastic_transform(x, constant, generator):
    """Random affine (cv2.getAffineTransform of three jittered points, cv2.warpAffine bilinear with
    reflect-101 borders), then a smooth random displacement (skimage gaussian of U(−1, 1), mode
    'reflect', truncate 3, × α) sampled with scipy map_coordinates (order 1, mode 'reflect'). OpenCV
    quantises sample positions to 1/32 pixel; here they are exact."""
    alpha_fraction, sigma_fraction, jitter_fraction = constant
    batch, _, height, width = x.shape
    size = min(height, width)  # IMSIZE of the recipe (32 for CIFAR)
    alpha, sigma, jitter = alpha_fraction * size, sigma_fraction * size, jitter_fraction * size
    centre, square = torch.tensor([height // 2, width // 2], dtype=torch.float64), size // 3
    source = torch.stack([centre + square, torch.stack([centre[0] + square, centre[1] - square]), centre - square])
    target = source + (2 * torch.rand((batch, 3, 2), generator=generator, dtype=torch.float64) - 1) * jitter
    ones = torch.ones(batch, 3, 1, dtype=torch.float64)
    forward = torch.linalg.solve(torch.cat([source.expand(batch, 3, 2), ones], 2), target)  # [B, 3, 2]
    matrix = torch.cat([forward.transpose(1, 2), torch.tensor([[[0.0, 0.0, 1.0]]]).double().expand(batch, 1, 3)], 1)
    inverse = torch.linalg.inv(matrix)  # warpAffine samples the source at M⁻¹·(column, row)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([cols, rows, torch.ones_like(rows)]).reshape(3, -1)
    mapped = (inverse @ points).reshape(batch, 3, height, width)
    warped = ops.bilinear_sample(x, mapped[:, 1].to(x), mapped[:, 0].to(x), "reflect101")
    noise = (2 * torch.rand((batch, 2, height, width), generator=generator, dtype=torch.float64) - 1).to(x)
    displacement = ops.gaussian_filter(noise, sigma, "symmetric", truncate=3.0) * alpha
    grid_rows, grid_cols = rows.to(x)[None], cols.to(x)[None]
    return ops.bilinear_sample(warped, grid_rows + displacement[:, 1], grid_cols + displacement[:, 0], "symmetric")


def _pixelate(x, factor, generator):
    height, width = x.shape[-2:]
    x = torch.round(x * 255) / 255  # the recipe resizes the 8-bit PIL image
    return ops.box_resize(ops.box_resize(x, int(height * factor), int(width * factor)), height, width)


def _jpeg_compression(x, quality, generator):
    return ops.jpeg(x, quality)


# Zoom factors exactly as the recipe's np.arange(1, stop, 0.01) gives them (floating point puts
# 1.06 and 1.11 inside the first two ranges but leaves 1.16, 1.21, 1.26 out of the others).
_ZOOMS = tuple(tuple(float(f) for f in np.arange(1, stop, 0.01)) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))
_MOTION = (
    "ImageMagick's MotionBlurImage re-implemented from its source; within one 8-bit level of ImageMagick 6.9 "
    "on >= 99.6 % of values (docs/corruptions.md), not bit-exact"
)

CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10), _gaussian_noise),
        Corruption("shot_noise", (500, 250, 100, 75, 50), _shot_noise),
        Corruption("impulse_noise", (0.01, 0.02, 0.03, 0.05, 0.07), _impulse_noise),
        Corruption("defocus_blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), _defocus_blur),
        Corruption("glass_blur", ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)), _glass_blur),
        Corruption("motion_blur", ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), _motion_blur, "floor", True, _MOTION),
        Corruption("zoom_blur", _ZOOMS, _zoom_blur),
        Corruption(
            "snow",
            (
                (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
            ),
            _snow,
            "floor",
            True,
            "snowflakes streaked by " + _MOTION,
        ),
        Corruption(
            "frost",
            ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
            _frost,
            "floor",
            True,
            "procedural ice texture instead of the recipe's five frost photographs",
        ),
        Corruption("fog", ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)), _fog),
        Corruption("brightness", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness),
        Corruption("contrast", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast),
        Corruption(
            "elastic_transform",
            ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
            _elastic_transform,
        ),
        Corruption("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate, "round"),
        Corruption("jpeg_compression", (80, 65, 58, 50, 40), _jpeg_compression, "round"),
    )
}


def _check(name: str, severity: int) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption={name!r} is invalid: allowed {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r} is invalid: allowed {list(SEVERITIES)}")
    return CORRUPTIONS[name]


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """One corruption at one severity on a batch [B, C, H, W] (float in [0, 1] or uint8), on its device.

    ``generator`` is a CPU torch.Generator: all randomness comes from it, so the result is fixed by
    its seed and the batch on every device (up to float rounding, which can move a value by one
    8-bit level). Returns the input's dtype, on 8-bit levels."""
    corruption = _check(name, severity)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise ValueError(f"images of shape {tuple(images.shape)} is invalid: allowed square [B, 1 or 3, H, H]")
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    out = corruption.apply(x, corruption.constants[severity - 1], generator).clamp(0, 1) * 255
    levels = torch.floor(out + 1e-4) if corruption.rounding == "floor" else torch.round(out)
    if images.dtype == torch.uint8:
        return levels.to(torch.uint8)
    return (levels / 255).to(images.dtype)


def regenerate(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A regenerated CIFAR-C split: uint8 [N, C, H, W] → uint8 on the CPU, corrupted batch by batch on ``device``.

    Batch k uses a generator seeded from (seed, name, severity, k): the result is fixed by the seed
    and ``batch_size`` (part of the recipe, like the seed), and any batch can be recomputed alone."""
    _check(name, severity)
    if images.dtype != torch.uint8:
        raise ValueError(f"images of dtype {images.dtype} is invalid: allowed torch.uint8")
    device = device or images.device
    parts = []
    for number, start in enumerate(range(0, images.shape[0], batch_size)):
        key = zlib.crc32(f"{seed}:{name}:{severity}:{number}".encode())
        generator = torch.Generator().manual_seed(key)
        parts.append(corrupt(images[start : start + batch_size].to(device), name, severity, generator).cpu())
    return torch.cat(parts) if parts else images.clone()


def load_cifar_c(data_dir: str | Path, dataset: str, name: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official (uint8 [N, 3, 32, 32], int64 [N]) slice of one corruption at one severity."""
    folders = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
    if dataset not in folders:
        raise ValueError(f"dataset={dataset!r} is invalid: allowed {sorted(folders)}")
    _check(name, severity)
    root = Path(data_dir).expanduser() / folders[dataset]
    images_path, labels_path = root / f"{name}.npy", root / "labels.npy"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DatasetMissingError(
                f"{path} not found: put the official {folders[dataset]} files (Zenodo) in "
                f"{root}, or use the regenerated corruptions"
            )
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[0] % 5:
        raise ValueError(
            f"{images_path} of dtype {images.dtype} and shape {images.shape} is invalid: "
            "allowed uint8 [5·N, H, W, 3] (5 severities × N images)"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{labels_path} of shape {labels.shape} is invalid: allowed ({images.shape[0]},)")
    per_severity = images.shape[0] // 5
    part = slice((severity - 1) * per_severity, severity * per_severity)
    x = torch.from_numpy(np.ascontiguousarray(images[part].transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(np.asarray(labels[part]).astype(np.int64))
