"""Optimisers and the learning-rate schedule of pretraining.

LARS (You et al. 2017) as used by ACL and RoCL: every parameter (BN and biases included)
gets the layer-wise trust ratio η·‖w‖ / (‖g‖ + wd·‖w‖), weight decay folded into the
update, then SGD momentum. The released codes use a CUDA-only extension (torchlars) or a
private file; this small implementation is device-agnostic and tested against the formula.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from bench.config import PretrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling on every parameter."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        eps: float = 1e-8,
    ):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                weight_norm, grad_norm = torch.norm(param), torch.norm(grad)
                decay = group["weight_decay"]
                trust = group["trust_coefficient"] * weight_norm / (grad_norm + decay * weight_norm + group["eps"])
                trust = torch.where((weight_norm > 0) & (grad_norm > 0), trust, torch.ones_like(trust))
                update = (grad + decay * param) * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: PretrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "lars":
        return LARS(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                    trust_coefficient=config.lars_trust)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def learning_rate(step: int, total_steps: int, warmup_steps: int, config: PretrainConfig) -> float:
    """Per-iteration linear warm-up from ``warmup_start_lr``·lr to lr, then cosine to the floor."""
    peak, floor = config.lr, config.lr * config.min_lr_fraction
    if step < warmup_steps:
        start = config.warmup_start_lr * peak
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
