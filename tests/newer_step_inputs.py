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
- ``released_name``: our key -> the released ACL-family key (``bench.engine.checkpoints``' map plus the
  projector ``fc.``), to load the same weights into the released model and read its tensors back;
- ``checksums``: sum, L2 norm and the dot product with a fixed probe pattern.
The fixture generator (outside the repository) imports this module, so both sides are built
from the same formulas by construction.
"""

from __future__ import annotations

import torch
import weight_patterns
from torch import nn
from weight_patterns import SinePattern

from bench.engine.models import IMAGENET_MEAN, IMAGENET_STD, Normalize

BN_NAMES = ("normal", "pgd")  # released bn_list index <-> our branch
BATCH, IMAGE_SIZE = 4, 8
EPSILON, STEP_SIZE, PGD_STEPS = 8 / 255, 2 / 255, 2


pattern = SinePattern(step=0.61803398875, linear=5, modulus=65521, ripple=2.3, period=991)


@torch.no_grad()
def fill_weights(model: nn.Module) -> None:
    """``weight_patterns.fill_weights`` by our key names, plus the normalisation buffers as the
    float64 ImageNet constants (not float32 values cast up)."""
    weight_patterns.fill_weights(model, pattern)
    for module in model.modules():
        if isinstance(module, Normalize):
            module.mean.copy_(torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view_as(module.mean))
            module.std.copy_(torch.tensor(IMAGENET_STD, dtype=torch.float64).view_as(module.std))


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
