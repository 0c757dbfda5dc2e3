"""Batched torch versions of the image operations the CIFAR-10-C recipe calls (bench.engine.corruptions).

Each function reproduces the library call of hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py
that its docstring names (scipy.ndimage, scikit-image, OpenCV, Pillow, ImageMagick), on a batch
[B, C, H, W] of float images in [0, 1], on the images' device. Randomness is drawn by the callers
on the CPU from one ``torch.Generator``, so a seed gives the same corruption on every device.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F


def fold(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map integer positions outside [0, size) inside, as a border mode does:
    'nearest' (edge replicated; scipy 'nearest', ImageMagick's edge virtual pixels),
    'symmetric' (d c b a | a b c d; scipy 'reflect'), 'reflect101' (d c b | a b c d; OpenCV's default)."""
    if mode == "nearest" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "symmetric":
        index = index.remainder(2 * size)
        return torch.where(index >= size, 2 * size - 1 - index, index)
    if mode == "reflect101":
        index = index.remainder(2 * size - 2)
        return torch.where(index >= size, 2 * size - 2 - index, index)
    raise ValueError(f"mode={mode!r} is invalid: allowed ['nearest', 'reflect101', 'symmetric']")


def _pad(images: torch.Tensor, rows: int, cols: int, mode: str) -> torch.Tensor:
    height, width = images.shape[-2:]
    device = images.device
    row_index = fold(torch.arange(-rows, height + rows, device=device), height, mode)
    col_index = fold(torch.arange(-cols, width + cols, device=device), width, mode)
    return images[..., row_index, :][..., col_index]


def correlate(images: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """2-D correlation of every channel with one odd-sized kernel, borders by ``mode`` (cv2.filter2D)."""
    rows, cols = kernel.shape[0] // 2, kernel.shape[1] // 2
    channels = images.shape[1]
    weight = kernel.to(images).expand(channels, 1, *kernel.shape)
    return F.conv2d(_pad(images, rows, cols, mode), weight, groups=channels)


def gaussian_kernel_1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius int(truncate·σ + 0.5), exp(−x²/2σ²) normalised."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * offsets**2 / sigma**2)
    return taps / taps.sum()


def gaussian_filter(images: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian / scipy.ndimage.gaussian_filter over the two spatial axes (σ ≤ 1e-15:
    identity, as scipy skips such axes)."""
    if sigma <= 1e-15:
        return images
    taps = gaussian_kernel_1d(sigma, truncate)
    return correlate(correlate(images, taps[None, :], mode), taps[:, None], mode)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.py ``disk``: an aliased disk on a 17×17 grid (wider for radius > 8), normalised,
    then cv2.GaussianBlur (ksize 3, or 5 for radius > 8) to anti-alias it; cropped to its support."""
    extent, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = torch.arange(-extent, extent + 1, dtype=torch.float64)
    disk = ((grid[None, :] ** 2 + grid[:, None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    offsets = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * alias_blur**2))
    taps /= taps.sum()
    blurred = correlate(correlate(disk[None, None], taps[None, :], "reflect101"), taps[:, None], "reflect101")[0, 0]
    support = blurred.abs().sum(0).nonzero().flatten()
    first, last = int(support.min()), int(support.max())
    first, last = min(first, 2 * extent - last), max(last, 2 * extent - first)  # keep it centred
    return blurred[first : last + 1, first : last + 1]


def bilinear_sample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample every channel at per-image float positions rows/cols [B, H', W'] (scipy map_coordinates,
    order 1); integer neighbours outside the image are folded by ``mode``."""
    batch, _, height, width = images.shape
    row0, col0 = rows.floor(), cols.floor()
    row_weight, col_weight = (rows - row0)[:, None], (cols - col0)[:, None]
    row0, col0 = row0.long(), col0.long()
    index = torch.arange(batch, device=images.device)[:, None, None]

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return images[index, :, fold(r, height, mode), fold(c, width, mode)].permute(0, 3, 1, 2)

    top = at(row0, col0) * (1 - col_weight) + at(row0, col0 + 1) * col_weight
    bottom = at(row0 + 1, col0) * (1 - col_weight) + at(row0 + 1, col0 + 1) * col_weight
    return top * (1 - row_weight) + bottom * row_weight


def clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """make_cifar_c.py ``clipped_zoom``: the centre ceil(h/z) crop, scipy.ndimage.zoom(order=1) by z
    (output round(crop·z), Python rounding; corner-aligned linear interpolation), centre-trimmed."""
    height = images.shape[-2]
    crop = int(math.ceil(height / factor))
    top = (height - crop) // 2
    size = int(round(crop * factor))
    zoomed = F.interpolate(
        images[..., top : top + crop, top : top + crop], size=(size, size), mode="bilinear", align_corners=True
    )
    trim = (size - height) // 2
    return zoomed[..., trim : trim + height, trim : trim + height]


def plasma_fractal(count: int, mapsize: int, wibble_decay: float, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c.py ``plasma_fractal`` (diamond-square, a modification of FLHerne/mapgen
    diamondsquare.py) for ``count`` maps at once, in [0, 1]; mapsize a power of two. As in the
    original, each new point gets mean/4 + wibble·U(−wibble, wibble)."""
    maps = torch.zeros(count, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = (2 * torch.rand(total.shape, generator=generator, dtype=torch.float64) - 1) * wibble
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibble_decay
    low = maps.amin(dim=(1, 2), keepdim=True)
    maps = maps - low
    return maps / maps.amax(dim=(1, 2), keepdim=True)


def motion_blur(images: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick MotionBlurImage (MagickCore/effect.c) re-implemented: width 2·ceil(radius)+1 taps
    i = 0…width−1 of a one-sided Gaussian exp(−i²/2σ²) (normalised), tap i read at column
    ceil(i·cos θ − 0.5) and row ceil(i·sin θ − 0.5) from the pixel, edge pixels replicated.
    ``angles`` [B] in degrees. Not run against ImageMagick: an approximation of it."""
    width = int(2 * math.ceil(radius) + 1)
    taps = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(images)
    theta = torch.deg2rad(angles.double())
    steps = torch.arange(width, dtype=torch.float64)
    col_offsets = torch.ceil(steps[None] * torch.cos(theta)[:, None] - 0.5).long().to(images.device)  # [B, width]
    row_offsets = torch.ceil(steps[None] * torch.sin(theta)[:, None] - 0.5).long().to(images.device)
    batch, _, height, width_px = images.shape
    index = torch.arange(batch, device=images.device)[:, None, None]
    rows = torch.arange(height, device=images.device)[None, :, None]
    cols = torch.arange(width_px, device=images.device)[None, None, :]
    out = torch.zeros_like(images)
    for tap in range(width):
        r = fold(rows + row_offsets[:, tap, None, None], height, "nearest")
        c = fold(cols + col_offsets[:, tap, None, None], width_px, "nearest")
        out += taps[tap] * images[index, :, r, c].permute(0, 3, 1, 2)
    return out


def _box_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """Pillow's BOX resampling weights (libImaging/Resample.c precompute_coeffs) as a [out, in] matrix:
    support ½·max(scale, 1) around each output centre (x + ½)·scale, box evaluated at input centres."""
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support = 0.5 * filter_scale
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        centre = (out + 0.5) * scale
        first, last = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        for index in range(first, last):
            position = (index - centre + 0.5) / filter_scale
            matrix[out, index] = 1.0 if -0.5 <= position < 0.5 else 0.0
        matrix[out] /= matrix[out].sum()
    return matrix


def box_resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL ``Image.resize((width, height), BOX)`` on uint8-valued images: horizontal pass, then
    vertical, each rounded to 8 bits as Pillow's 8-bit path does (floats in [0, 1] on 1/255 levels)."""
    levels = images * 255
    horizontal = _box_matrix(images.shape[-1], width).to(images)
    levels = torch.floor(levels @ horizontal.T + 0.5).clamp(0, 255)
    vertical = _box_matrix(images.shape[-2], height).to(images)
    levels = torch.floor(vertical @ levels + 0.5).clamp(0, 255)
    return levels / 255


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL JPEG encode + decode at ``quality`` (Pillow's defaults otherwise, as the recipe), per image
    on the CPU: the recipe's codec exactly rather than a GPU codec with other chroma settings."""
    levels = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
    from PIL import Image

    decoded = []
    for image in levels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        array = np.asarray(Image.open(buffer)).reshape(image.shape)
        decoded.append(torch.from_numpy(array.copy()))
    return torch.stack(decoded).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_RGB2GRAY (0.299 R + 0.587 G + 0.114 B), [B, 1, H, W]; a 1-channel image is its own."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights[None, :, None, None]).sum(1, keepdim=True)
