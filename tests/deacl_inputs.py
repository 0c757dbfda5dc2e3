"""Inputs and checksums of DeACL's step-level fixture (tests/data/deacl_step.json, docs/deacl.md).

The fixture holds the figures of ONE released DeACL student step (pantheon5100/DeACL) run on a
CPU in float64 outside this repository. Everything that step consumed is regenerated here from
formulas that never touch torch's random number generator, so the test feeds our step the same
weights, view and attack noise without storing a tensor. The fixture generator imports this
module, so both sides are built from the same formulas by construction:

- ``pattern(key, shape)``: deterministic, random-looking float64 values in [-1, 1] (a sine of a
  quadratic sequence of the flat index, phase-shifted by the crc32 of ``key``);
- ``fill_weights(model, prefix)``: every parameter and BN running statistic of one of OUR models,
  keyed by ``prefix`` + its name in our state dict (He-scaled convolutions, BN near (1, 0), running
  statistics near (0, 1)); the normalisation buffers keep their constants;
- ``released_name(ours)``: our encoder key -> the key in DeACL's torchvision ResNet-18;
- ``view`` and ``start_noise``: the weak view (pixels in [0.1, 0.9]) and the PGD start δ, so that
  x + δ stays in [0, 1] where the released (unclamped) and our (clamped) starts coincide;
- ``checksums``: sum, L2 norm and the dot product with a fixed pattern ("probe").
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import weight_patterns
from torch import nn
from weight_patterns import SinePattern

FIXTURE = Path(__file__).parent / "data" / "deacl_step.json"
PATTERN_VERSION = 1  # bump (and regenerate the fixture) when a formula below changes
BATCH, IMAGE_SIZE = 4, 8
EPSILON, STEP_SIZE, PGD_STEPS, DISTILL_WEIGHT = 8 / 255, 2 / 255, 5, 2.0


pattern = SinePattern(step=0.7548776662, linear=3, modulus=65537, ripple=2.3, period=1009, phase_modulus=99991)


def fill_weights(model: nn.Module, prefix: str) -> None:
    """Set ``model``'s (float64) convolutions, linears and BatchNorms from ``pattern``, keyed
    ``prefix + <our state-dict name>``; every weight pattern·√(6 / fan_in) (He's uniform bound)."""
    weight_patterns.fill_weights(model, pattern, prefix, conv_scale=_he_uniform, linear_scale=_he_uniform)


def _he_uniform(fan_in: int) -> float:
    return math.sqrt(6 / fan_in)


def released_name(ours: str) -> str:
    """Our key -> DeACL's (torchvision names, one plain BN, normalisation inside the backbone).

    'encoder.layer2.0.shortcut.1.branches.normal.weight' -> 'layer2.0.downsample.1.weight';
    'normalize.mean' -> 'normalize.mean'.
    """
    return ours.removeprefix("encoder.").replace(".branches.normal.", ".").replace(".shortcut.", ".downsample.")


def view(key: str) -> torch.Tensor:
    """A [BATCH, 3, IMAGE_SIZE, IMAGE_SIZE] float64 batch with pixels in [0.1, 0.9]."""
    return 0.5 + 0.4 * pattern(key, (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))


def start_noise(key: str) -> torch.Tensor:
    """δ in [-ε, ε] of the PGD start (x + δ stays inside [0, 1] for ``view`` pixels)."""
    return EPSILON * pattern(key, (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))


def checksums(key: str, tensor: torch.Tensor) -> dict[str, float]:
    """sum, L2 norm and probe = Σ tensor·pattern('probe/' + key): a permutation or sign flip changes the probe."""
    values = tensor.detach().to(torch.float64).cpu()
    return {
        "sum": float(values.sum()),
        "norm": float(values.norm()),
        "probe": float((values * pattern("probe/" + key, values.shape)).sum()),
    }


def differences(expected: dict[str, float], actual: dict[str, float], rtol: float, atol: float) -> list[str]:
    """Statistics off by more than rtol·(|expected| + norm) + atol: the norm term scales the tolerance
    of a sum that cancels to the tensor's own size; atol covers tensors whose exact value is zero."""
    scale = abs(expected["norm"])
    return [
        f"{stat}: expected {expected[stat]!r}, got {actual[stat]!r}"
        for stat in ("sum", "norm", "probe")
        if not abs(actual[stat] - expected[stat]) <= rtol * (abs(expected[stat]) + scale) + atol
    ]
