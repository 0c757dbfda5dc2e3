"""Where the fast path's speed comes from is exact: on ResNet-18 (4 images at 16 px, PGD-2), with one
shard and with two, the fast step and the reference-style step (which recomputes what the released
attacks recompute) give bit-identical losses and parameter gradients in CPU fp32, and the same
BatchNorm running statistics, except AdvCL's expected difference.

AdvCL's expected difference: the released attack forwards x1, x2 and the high-frequency view through
the 'normal' BatchNorm branch and the projector at every PGD step, in train mode, so those running
statistics move 3·K more times per step (K PGD steps; the projector's more) than on the fast path,
which forwards each view once (same values: the views and weights do not change within a step).
Nothing else differs: the 'pgd' and 'pgd_ce' branches, which the released finetuning loads
(Asym-AdvCL/utils.py ``load_BN_checkpoint``), match exactly, as does every parameter and gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.config import AttackConfig, PretrainConfig
from bench.engine.data import to_float
from bench.engine.shards import Shards, shard_generators
from bench.methodkit import registry
from bench.methodkit.method import StepContext
from bench.runs.train import train_step

ATTACK = AttackConfig(epsilon=0.1, step_size=0.025, steps=2)
CPU = torch.device("cpu")


def _step(method, model, images: torch.Tensor, reference_style: bool, count: int):
    """One step as bench.runs.train runs it (per-shard BatchNorm unless synced), then its backward."""
    shards = Shards(count, shard_generators(3, range(count), CPU))
    context = StepContext(
        0,
        0,
        1,
        CPU,
        shards.generators[0],
        ATTACK,
        torch.arange(images.shape[0]),
        shards=shards,
        reference_style=reference_style,
    )
    batch_norm = "whole" if count == 1 or type(method).model.synced_bn else "per-shard"
    model.zero_grad(set_to_none=True)
    loss, _ = train_step(method, model, images, context, PretrainConfig(), batch_norm)
    model.zero_grad(set_to_none=True)  # the reference-style ACL attack leaves weight gradients behind
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {name: b.clone() for name, b in model.named_buffers()}


def _both_paths(name: str, count: int):
    cls = registry.get(name)
    method = cls(cls.make_params(dict(cls.published("smoke", "digits").params)))
    torch.manual_seed(0)
    model = method.build_model("resnet18")
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    method.setup(model, images, StepContext(0, 0, 1, CPU, torch.Generator(), ATTACK))
    reference_method, reference_model = copy.deepcopy(method), copy.deepcopy(model)
    fast = _step(method, model, to_float(images), False, count)
    reference = _step(reference_method, reference_model, to_float(images), True, count)
    return fast, reference


def _advcl_expected_difference(buffer: str) -> bool:
    """'normal'-branch BatchNorm buffers of the encoder and the projector's BatchNorm (projector.1)."""
    return ".branches.normal." in buffer or buffer.startswith("projector.1.")


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "count"), [("acl", 1), ("rocl", 2), ("advcl-ip", 2)])
def test_fast_and_reference_steps_are_bit_identical_on_resnet18(name, count):
    (loss, grads, buffers), (ref_loss, ref_grads, ref_buffers) = _both_paths(name, count)
    assert torch.equal(loss, ref_loss), (float(loss), float(ref_loss))
    assert grads.keys() == ref_grads.keys() and len(grads) > 50
    for key, grad in grads.items():
        assert torch.equal(grad, ref_grads[key]), key
    differing = {key for key, value in buffers.items() if not torch.equal(value, ref_buffers[key])}
    if not name.startswith("advcl"):
        assert differing == set()
        return
    expected = {key for key in buffers if _advcl_expected_difference(key)}
    # 20 encoder BatchNorms ('normal' branch) and the projector's: running mean, var, batch count each
    assert len(expected) == 3 * 21
    assert differing == expected
    for branch in ("pgd", "pgd_ce"):  # what the released finetuning loads: identical
        keys = [key for key in buffers if f".branches.{branch}." in key]
        assert len(keys) == 3 * 20 and not differing & set(keys)
    normal = [key for key in expected if key.endswith("normal.num_batches_tracked")]
    # x1, x2 and the high-frequency view forwarded again at every PGD step, as released
    assert len(normal) == 20
    assert all(int(ref_buffers[key]) - int(buffers[key]) == 3 * ATTACK.steps for key in normal)
    assert int(ref_buffers["projector.1.num_batches_tracked"]) > int(buffers["projector.1.num_batches_tracked"])
