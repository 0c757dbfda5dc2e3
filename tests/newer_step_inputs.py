"""Inputs and checksums of the DynACL / AIR step fixtures (tests/data/newer_steps.json).

A fixture holds the figures of ONE training step of the released code (PKU-ML/DYNACL
``train_DynACL.py`` ``train``; GodXuxilie/Enhancing_ACL_via_AIR ``pretraining.py`` ``train``)
run on a CPU in float64 (procedure: docs/methods-newer.md, "Step fixtures"). Everything the
step consumed is rebuilt here from formulas that never touch a random number generator, so a
test feeds our step exactly the same weights, views and PGD start without storing a tensor:

- ``pattern(key, shape)``: deterministic float64 values in [-1, 1] (a sine of a quadratic
  residue of the flat index, phase-shifted by crc32 of the key);
- ``fill_weights(model)``: every parameter and BN buffer of OUR model from ``pattern``, by its
  key in our state dict;
- ``images``/``start_noise``: views in [0, 1] and PGD starts δ with x + δ inside [0, 1] (so the
  released unclamped start and our clamped one are the same point);
- ``released_name``: our key -> the released ACL-family key (``bench.checkpoints``' map plus the
  projector ``fc.``), to load the same weights into the released model and read its tensors back;
- ``checksums``: sum, L2 norm and the dot product with a fixed probe pattern.
The fixture generator (outside the repository) imports this module, so both sides are built
from the same formulas by construction.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import nn

from bench.models import IMAGENET_MEAN, IMAGENET_STD, Normalize

BN_NAMES = ("normal", "pgd")  # released bn_list index <-> our branch
BATCH, IMAGE_SIZE = 4, 8
EPSILON, STEP_SIZE, PGD_STEPS = 8 / 255, 2 / 255, 2


def pattern(key: str, shape) -> torch.Tensor:
    """float64 in [-1, 1]: sin(φ_key + 0.618·((i² + 5i) mod 65521) + 2.3·(i mod 991))."""
    shape = tuple(shape)
    count = int(np.prod(shape)) if shape else 1
    index = np.arange(count, dtype=np.int64)
    phase = (zlib.crc32(key.encode()) % 100003) / 100003 * 2 * math.pi
    values = np.sin(phase + 0.61803398875 * ((index * index + 5 * index) % 65521) + 2.3 * (index % 991))
    return torch.from_numpy(values).reshape(shape)


@torch.no_grad()
def fill_weights(model: nn.Module) -> None:
    """Conv weights He-scaled, linear weights 1/√fan-in, BN affine near (1, 0), statistics near (0, 1);
    normalisation buffers the ImageNet constants as float64 (not float32 values cast up)."""
    for path, module in model.named_modules():
        name = f"{path}." if path else ""
        if isinstance(module, Normalize):
            module.mean.copy_(torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view_as(module.mean))
            module.std.copy_(torch.tensor(IMAGENET_STD, dtype=torch.float64).view_as(module.std))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = int(np.prod(module.weight.shape[1:]))
            scale = 2 / math.sqrt(fan_in) if isinstance(module, nn.Conv2d) else math.sqrt(2 / fan_in)
            module.weight.copy_(pattern(name + "weight", module.weight.shape) * scale)
            if module.bias is not None:
                module.bias.copy_(0.1 * pattern(name + "bias", module.bias.shape))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(1 + 0.2 * pattern(name + "weight", module.weight.shape))
            module.bias.copy_(0.1 * pattern(name + "bias", module.bias.shape))
            module.running_mean.copy_(0.1 * pattern(name + "running_mean", module.running_mean.shape))
            module.running_var.copy_(1 + 0.5 * pattern(name + "running_var", module.running_var.shape))


def images(key: str, batch: int = BATCH, size: int = IMAGE_SIZE) -> torch.Tensor:
    return (0.5 + 0.5 * pattern(key, (batch, 3, size, size))).clamp(0.0, 1.0)


def start_noise(key: str, x: torch.Tensor, epsilon: float = EPSILON) -> torch.Tensor:
    """δ, |δ| ≤ ε, sign flipped where x + δ would leave [0, 1]."""
    delta = (epsilon * pattern(key, x.shape)).clamp(-epsilon, epsilon)
    outside = ((x + delta) < 0) | ((x + delta) > 1)
    return torch.where(outside, -delta, delta)


def released_name(ours: str) -> str:
    """'encoder.layer2.0.shortcut.1.branches.pgd.weight' -> 'layer2.0.downsample.bn.bn_list.1.weight';
    'projector.bn1.branches.normal.bias' -> 'fc.bn1.bn_list.0.bias'; 'normalize.mean' unchanged."""
    name = ours
    for index, branch in enumerate(BN_NAMES):
        name = name.replace(f".branches.{branch}.", f".bn_list.{index}.")
    if name.startswith("encoder."):
        name = name.removeprefix("encoder.")
        return name.replace(".shortcut.0.", ".downsample.conv.").replace(".shortcut.1.", ".downsample.bn.")
    if name.startswith("projector."):
        return "fc." + name.removeprefix("projector.")
    return name


def released_state(our_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ContrastiveModel state dict under the released names (normalize buffers flattened)."""
    return {released_name(k): (v.flatten() if k.startswith("normalize.") else v) for k, v in our_state.items()}


def checksums(key: str, tensor: torch.Tensor) -> list[float]:
    """[sum, L2 norm, dot with the probe pattern of ``key``] in float64."""
    values = tensor.detach().double().flatten()
    probe = pattern("probe/" + key, values.shape)
    return [float(values.sum()), float(values.norm()), float(values @ probe)]


def key_weights(query_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DynACL's key encoder for the fixture: the query plus 0.05·pattern (parameters and BN
    statistics), so that routing a view through the wrong encoder changes every figure."""
    state = {}
    for name, value in query_state.items():
        if value.is_floating_point() and not name.startswith("normalize."):
            value = value + 0.05 * pattern("key/" + name, value.shape)
        state[name] = value.clone()
    return state
