"""The one recipe behind the inputs of every step fixture (fidelity, DynACL/AIR, DeACL).

A step fixture stores the figures of one released training step; the test rebuilds everything
that step consumed from formulas that never touch a random number generator. All three fixture
sets use the same recipe: a deterministic sine ``pattern`` per key, and model weights filled
from it by state-dict name. Each set was generated with its own constants, so each keeps them
(changing one changes that fixture); what is shared is the code.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class SinePattern:
    """float64 values in [-1, 1]: sin(φ_key + step·((i² + linear·i) mod modulus) + ripple·(i mod period)),
    φ_key = 2π·(crc32(key) mod phase_modulus) / phase_modulus, i the flat index.

    The quadratic residue makes the rows as far from low rank as uniform noise, so conv filters
    built from it behave like random ones.
    """

    step: float
    linear: int
    modulus: int
    ripple: float
    period: int
    phase_modulus: int = 100003

    def __call__(self, key: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        shape = tuple(shape)
        phase = (zlib.crc32(key.encode()) % self.phase_modulus) / self.phase_modulus * 2 * math.pi
        quadratic, ripple = self._terms(int(np.prod(shape)) if shape else 1)
        values = np.sin(phase + quadratic + ripple)  # left to right, as the fixtures were generated
        return torch.from_numpy(values).reshape(shape)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a few frozen patterns, kept for the whole session on purpose)
    def _terms(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The two key-free terms, step·((i² + linear·i) mod modulus) and ripple·(i mod period), per size.

        Half of a fill's time, and a ResNet-18 has a dozen sizes: each step fixture refills one (about 0.2 s),
        so the suite spent ~10 s of CPU here before they were kept."""
        index = np.arange(size, dtype=np.int64)
        quadratic = self.step * ((index * index + self.linear * index) % self.modulus)
        ripple = self.ripple * (index % self.period)
        quadratic.flags.writeable = ripple.flags.writeable = False
        return quadratic, ripple


def he_conv(fan_in: int) -> float:
    return 2 / math.sqrt(fan_in)


def he_linear(fan_in: int) -> float:
    return math.sqrt(2 / fan_in)


@torch.no_grad()
def fill_weights(
    model: nn.Module,
    pattern: SinePattern,
    prefix: str = "",
    conv_scale: Callable[[int], float] = he_conv,
    linear_scale: Callable[[int], float] = he_linear,
) -> None:
    """Every conv/linear weight and bias and every BatchNorm parameter and running statistic of
    ``model`` (float64) from ``pattern``, keyed ``prefix + <module path>.<name>``.

    Weights are ``pattern · scale(fan_in)``, biases 0.1·pattern, BN affine near (1, 0) and running
    statistics near (0, 1); other buffers (normalisation constants, ``num_batches_tracked``) are left.
    """
    for path, module in model.named_modules():
        key = f"{prefix}{path}." if path else prefix
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            scale = conv_scale if isinstance(module, nn.Conv2d) else linear_scale
            fan_in = int(np.prod(module.weight.shape[1:]))
            module.weight.copy_(pattern(key + "weight", module.weight.shape) * scale(fan_in))
            if module.bias is not None:
                module.bias.copy_(0.1 * pattern(key + "bias", module.bias.shape))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(1 + 0.2 * pattern(key + "weight", module.weight.shape))
            module.bias.copy_(0.1 * pattern(key + "bias", module.bias.shape))
            module.running_mean.copy_(0.1 * pattern(key + "running_mean", module.running_mean.shape))
            module.running_var.copy_(1 + 0.5 * pattern(key + "running_var", module.running_var.shape))
