"""Inputs, key maps and checksums of the step-level fidelity fixtures (docs/fidelity-steps.md).

A fixture in ``tests/data/fidelity/`` holds the figures of ONE training step of a released
code base (loss, per-tensor gradient checksums, adversarial-example checksums) run on a CPU
in float64. Everything that step consumed is regenerated here from formulas that never touch
torch's random number generator, so a test can feed our step exactly the same weights,
views and attack noise without storing a single tensor:

- ``pattern(key, shape)``: a deterministic, random-looking float64 array in [-1, 1], a sine
  of a quadratic residue of the flat index, phase-shifted per key (crc32 of the key). Its
  rows are as far from low rank as uniform noise, so conv filters built from it behave
  like random ones.
- ``fill_weights(model)``: every parameter and BatchNorm buffer of one of OUR models, named
  by its key in OUR state dict (He-scaled conv weights, 1/sqrt(fan_in) linear weights,
  BN affine near (1, 0), running statistics near (0, 1)).
- ``images``, ``start_noise``, ``trades_noise``, ``pseudo_labels``: the views, the PGD random
  starts (kept inside [0, 1], so the released and our start clamps agree: D10 of the
  fidelity review), the TRADES start noise and the labels.
- ``acl_name`` / ``advcl_name`` / ``rocl_name``: our key -> the released model's key (the
  maps ``bench.engine.checkpoints`` documents), used to load the same weights into the released
  models and to read their gradients back under our names.
- ``checksums``: sum, L2 norm and the dot product with a fixed pattern ("probe"), which
  also catches permutations and sign flips that leave sum and norm unchanged.

The fixture generator (run by hand outside this repository, see the docs page) imports this
module, so both sides are built from the same formulas by construction.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
import weight_patterns
from torch import nn
from weight_patterns import SinePattern

FIXTURE_DIR = Path(__file__).parent / "data" / "fidelity"
PATTERN_VERSION = 1  # bump (and regenerate every fixture) if any formula below changes
BATCH = 4
IMAGE_SIZE = 8
NUM_CLASSES = 10
FLOAT32_ROUND = True  # noise is rounded to float32 values: RoCL draws it into a FloatTensor
BN_NAMES = ("normal", "pgd", "pgd_ce")  # index i of the released bn_list <-> our branch name


# --------------------------------------------------------------------------- formulas


pattern = SinePattern(step=0.61803398875, linear=7, modulus=65521, ripple=1.7, period=997)


def fill_weights(model: nn.Module, prefix: str = "") -> None:
    """Every parameter and BN running statistic of ``model`` (float64) from ``pattern``, keyed by the
    module's own state-dict names after ``prefix`` (``weight_patterns.fill_weights``)."""
    weight_patterns.fill_weights(model, pattern, f"{prefix}." if prefix else "")


def images(key: str, batch: int = BATCH, size: int = IMAGE_SIZE) -> torch.Tensor:
    """A [batch, 3, size, size] float64 batch in [0, 1] (uniform-looking pixels, edges included)."""
    return (0.5 + 0.5 * pattern(key, (batch, 3, size, size))).clamp(0.0, 1.0)


def _round32(values: torch.Tensor) -> torch.Tensor:
    return values.float().double() if FLOAT32_ROUND else values


def start_noise(key: str, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """δ with |δ| ≤ ε, float32-representable, and x + δ in [0, 1] (its sign flipped where needed).

    Inside [0, 1] the released starts (unclamped in ACL, AdvCL and RobustSSL, clamped in RoCL)
    and ours (``bench.engine.attacks.random_start`` clamps) are the same point.
    """
    delta = _round32(epsilon * pattern(key, x.shape)).clamp(-epsilon, epsilon)
    outside = ((x + delta) < 0) | ((x + delta) > 1)
    return torch.where(outside, -delta, delta)


def trades_noise(key: str, x: torch.Tensor) -> torch.Tensor:
    """n of TRADES' start x + 0.001·n: 2·pattern (spread like N(0, 1)), sign-flipped so x + 0.001·n ∈ [0, 1]."""
    noise = _round32(2.0 * pattern(key, x.shape))
    outside = ((x + 0.001 * noise) < 0) | ((x + 0.001 * noise) > 1)
    return torch.where(outside, -noise, noise)


def class_labels(key: str, batch: int, classes: int, ignored: int = 0) -> torch.Tensor:
    """Integer labels in [0, classes) from ``pattern``; the first ``ignored`` entries are -1 (ignore_index)."""
    values = ((pattern(key, (batch,)) + 1) / 2 * classes).floor().clamp(0, classes - 1).long()
    values[:ignored] = -1
    return values


# --------------------------------------------------------------------------- key maps


def acl_name(ours: str) -> str:
    """Ours -> VITA-Group ACL ``resnet_multi_bn.py`` (encoder) and ``proj_head`` as ``model.fc``.

    'encoder.layer2.0.shortcut.1.branches.pgd.weight' -> 'layer2.0.downsample.bn.bn_list.1.weight';
    'projector.bn1.branches.normal.bias' -> 'fc.bn1.bn_list.0.bias'; 'normalize.mean' unchanged.
    The same names hold for AdvCL's encoder (``resnet_cifar_multibn_ensembleFC.py``).
    """
    name = ours
    for index, branch in enumerate(BN_NAMES):
        name = name.replace(f".branches.{branch}.", f".bn_list.{index}.")
    if name.startswith("encoder."):
        name = name.removeprefix("encoder.")
        return name.replace(".shortcut.0.", ".downsample.conv.").replace(".shortcut.1.", ".downsample.bn.")
    if name.startswith("projector."):
        return "fc." + name.removeprefix("projector.")
    return name


ADVCL_HEADS = {2: "fc_002", 10: "fc_010", 50: "fc_050", 100: "fc_100", 500: "fc_500"}


def advcl_name(ours: str) -> str:
    """Ours -> Asym-AdvCL ``resnet_cifar_multibn_ensembleFC.py``: projector -> head_proj, pseudo_K -> fc_K."""
    if ours.startswith("projector."):
        return "head_proj." + ours.removeprefix("projector.")
    if ours.startswith("heads.pseudo_"):
        k, rest = ours.removeprefix("heads.pseudo_").split(".", 1)
        return f"{ADVCL_HEADS[int(k)]}.{rest}"
    return acl_name(ours)


ROCL_PROJECTOR = {"0": "linear_1", "2": "linear_2"}  # our nn.Sequential index -> Projector attribute


def rocl_name(ours: str) -> str:
    """Ours -> Asym-RoCL kuangliu ``models/resnet.py`` (one BN) and ``Projector`` (prefixed 'projector.').

    'encoder.layer1.0.bn1.branches.normal.weight' -> 'layer1.0.bn1.weight';
    'projector.0.weight' -> 'projector.linear_1.weight', 'projector.2.bias' -> 'projector.linear_2.bias'.
    """
    if ours.startswith("projector."):
        index, rest = ours.removeprefix("projector.").split(".", 1)
        return f"projector.{ROCL_PROJECTOR[index]}.{rest}"
    return ours.removeprefix("encoder.").replace(".branches.normal.", ".")


def acl_checkpoint(our_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ACL model's state dict as train_simCLR.py saves it ('state_dict'): released names and shapes."""
    return {acl_name(k): (v.flatten() if k.startswith("normalize.") else v) for k, v in our_state.items()}


def robustssl_name(ours: str, dual: bool) -> str:
    """Our ``Classifier`` key -> RobustSSL Vanilla_Finetuning's model key (head -> fc).

    Single BN (``models/resnet.py``, torchvision-style): 'backbone.encoder.layer2.0.shortcut.1.branches.normal.weight'
    -> 'layer2.0.downsample.1.weight'. Dual BN (``models/resnet_multi_bn.py``): the ACL names (``acl_name``).
    """
    if ours.startswith("head."):
        return "fc." + ours.removeprefix("head.")
    name = ours.removeprefix("backbone.")
    if dual:
        return acl_name(name)
    name = name.removeprefix("encoder.").replace(".branches.normal.", ".")
    return name.replace(".shortcut.0.", ".downsample.0.").replace(".shortcut.1.", ".downsample.1.")


# --------------------------------------------------------------------------- checksums


@functools.cache
def _probe(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The probe pattern of a checksum key (cached: the same gradient names recur in every test)."""
    return pattern("probe/" + key, shape)


def checksums(key: str, tensor: torch.Tensor) -> dict[str, float]:
    """sum, L2 norm and probe = Σ tensor·pattern('probe/'+key) of a tensor (float64)."""
    values = tensor.detach().to(torch.float64).cpu()
    probe = (values * _probe(key, tuple(values.shape))).sum()
    return {"sum": float(values.sum()), "norm": float(values.norm()), "probe": float(probe)}


def state_checksums(named: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    return {name: checksums(name, tensor) for name, tensor in sorted(named.items())}


def differences(expected: dict[str, float], actual: dict[str, float], rtol: float, atol: float = 0.0) -> list[str]:
    """Statistics of ``actual`` off ``expected`` by more than rtol·(|expected| + norm) + atol: empty if they agree.

    The norm term scales the tolerance of a sum or probe that happens to cancel to the size
    of the tensor itself, so "within 1e-5" means within 1e-5 of the tensor's own scale;
    ``atol`` covers tensors whose exact value is zero (a bias feeding a BatchNorm has a zero
    gradient, which float64 rounding leaves at ~1e-17).
    """
    scale = abs(expected["norm"])
    return [
        f"{stat}: expected {expected[stat]!r}, got {actual[stat]!r}"
        for stat in ("sum", "norm", "probe")
        if not abs(actual[stat] - expected[stat]) <= rtol * (abs(expected[stat]) + scale) + atol
    ]


def load_fixture(name: str) -> dict[str, Any]:
    with open(FIXTURE_DIR / f"{name}.json") as stream:
        return json.load(stream)
