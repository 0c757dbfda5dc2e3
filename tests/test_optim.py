"""LARS against the formula, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch

from bench.config import PretrainConfig
from bench.engine.optim import LARS, learning_rate


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3)
    w0, g0 = weight.detach().clone(), weight.grad.clone()
    lr, decay, trust, momentum = 0.5, 1e-2, 1e-3, 0.9
    optimizer = LARS([weight], lr=lr, momentum=momentum, weight_decay=decay, trust_coefficient=trust)
    optimizer.step()
    ratio = trust * w0.norm() / (g0.norm() + decay * w0.norm() + 1e-8)
    first_update = ratio * (g0 + decay * w0)
    assert torch.allclose(weight.detach(), w0 - lr * first_update, atol=1e-7)
    # second step: momentum buffer = m * previous + new scaled update
    w1 = weight.detach().clone()
    optimizer.step()
    ratio1 = trust * w1.norm() / (g0.norm() + decay * w1.norm() + 1e-8)
    buffer = momentum * first_update + ratio1 * (g0 + decay * w1)
    assert torch.allclose(weight.detach(), w1 - lr * buffer, atol=1e-7)


def test_lars_zero_weight_uses_unit_trust():
    weight = torch.nn.Parameter(torch.zeros(3))
    weight.grad = torch.ones(3)
    LARS([weight], lr=0.1, momentum=0.0).step()
    assert torch.allclose(weight.detach(), torch.full((3,), -0.1))


def test_schedule_warmup_then_cosine():
    config = PretrainConfig(lr=2.0, warmup_start_lr=0.1, min_lr_fraction=1e-3)
    assert math.isclose(learning_rate(0, 100, 10, config), 0.2)
    assert math.isclose(learning_rate(5, 100, 10, config), 0.2 + (2.0 - 0.2) * 0.5)
    assert math.isclose(learning_rate(10, 100, 10, config), 2.0)
    assert math.isclose(learning_rate(55, 100, 10, config), 0.002 + (2.0 - 0.002) * 0.5)
    assert math.isclose(learning_rate(100, 100, 10, config), 0.002)


def test_acl_lars_keeps_lr_inside_the_momentum_buffer():
    """ACL's optimizer/lars.py: buf = m·buf + lr·trust·(g + wd·w); w -= buf (no eps). With lr changing
    between steps (warm-up) it differs from the torchlars form, which scales the whole buffer by the new lr."""
    torch.manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(5))
    grad = torch.randn(5)
    w0 = weight.detach().clone()
    decay, trust, momentum, lrs = 1e-2, 1e-3, 0.9, (0.1, 0.3)
    optimizer = LARS(
        [weight],
        lr=lrs[0],
        momentum=momentum,
        weight_decay=decay,
        trust_coefficient=trust,
        eps=0.0,
        lr_in_momentum=True,
    )
    weight.grad = grad.clone()
    optimizer.step()
    buffer = lrs[0] * trust * w0.norm() / (grad.norm() + decay * w0.norm()) * (grad + decay * w0)
    assert torch.allclose(weight.detach(), w0 - buffer, atol=1e-7)
    w1 = weight.detach().clone()
    for group in optimizer.param_groups:
        group["lr"] = lrs[1]
    optimizer.step()
    buffer = momentum * buffer + lrs[1] * trust * w1.norm() / (grad.norm() + decay * w1.norm()) * (grad + decay * w1)
    assert torch.allclose(weight.detach(), w1 - buffer, atol=1e-7)
    torch_lars = LARS(
        [torch.nn.Parameter(w0.clone())],
        lr=lrs[0],
        momentum=momentum,
        weight_decay=decay,
        trust_coefficient=trust,
        eps=0.0,
    )
    parameter = torch_lars.param_groups[0]["params"][0]
    parameter.grad = grad.clone()
    torch_lars.step()
    torch_lars.param_groups[0]["lr"] = lrs[1]
    torch_lars.step()
    assert not torch.allclose(parameter.detach(), weight.detach(), atol=1e-9)  # lr outside the buffer differs


def test_acl_paper_preset_uses_acl_lars():
    from methods.acl import ACL
    from methods.simclr import SimCLR

    for method in (ACL, SimCLR):
        assert method.published("paper", "cifar10").pretrain["optimizer"] == "lars-acl"
