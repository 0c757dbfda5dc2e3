"""Optimisers and the learning-rate schedule of pretraining.

LARS (You et al. 2017) as used by ACL and RoCL: every parameter (BN and biases included)
gets the layer-wise trust ratio η·‖w‖ / (‖g‖ + wd·‖w‖), weight decay folded into the
update, then SGD momentum. The two released implementations differ in where lr sits:
- ``lars`` (RoCL: torchlars wrapping SGD): buf = m·buf + trust·(g + wd·w); w −= lr·buf,
  with eps 1e-8 in the trust ratio;
- ``lars-acl`` (ACL's ``optimizer/lars.py``, also DynACL/AIR/RCS): buf = m·buf + lr·trust·(g + wd·w);
  w −= buf, no eps, trust 1 where ‖w‖ or ‖g‖ < 1e-15.
They agree while lr is constant and differ while it changes (warm-up: the momentum of ACL's
form remembers the smaller past lrs). Both are device-agnostic and tested against the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a type only: the engine sits below the config
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
        lr_in_momentum: bool = False,
    ):
        """``lr_in_momentum=True`` with ``eps=0`` is ACL's released form (module docstring)."""
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps
        )
        super().__init__(params, defaults)
        self.lr_in_momentum = lr_in_momentum
        self.zero_norm_below = 1e-15 if lr_in_momentum else 0.0

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
                nonzero = (weight_norm > self.zero_norm_below) & (grad_norm > self.zero_norm_below)
                trust = torch.where(nonzero, trust, torch.ones_like(trust))
                update = (grad + decay * param) * trust
                if self.lr_in_momentum:
                    update = update * group["lr"]
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-1.0 if self.lr_in_momentum else -group["lr"])
        return loss


# ACL's released pretraining optimiser, VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py:
# its LARS (optimizer/lars.py, wd 1e-6) at lr 5.0, per-iteration warm-up from 0 over 10 epochs, then
# cosine to 1e-6 (``cosine_annealing(..., 1e-6 / args.lr, warmup_steps=10 * len(train_loader))``),
# batch 512, 1000 epochs. Overrides of ``PretrainConfig``: the paper rows of ``acl`` (and its variants)
# and of the ``simclr`` anchor (methods/acl.py, methods/simclr.py) both refer to this one dict.
ACL_LARS = MappingProxyType(
    {
        "optimizer": "lars-acl",
        "lr": 5.0,
        "weight_decay": 1e-6,
        "warmup_epochs": 10,
        "warmup_start_lr": 0.0,
        "min_lr_fraction": 1e-6 / 5.0,
        "epochs": 1000,
        "batch_size": 512,
    }
)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: PretrainConfig) -> torch.optim.Optimizer:
    if config.optimizer in ("lars", "lars-acl"):
        acl = config.optimizer == "lars-acl"
        return LARS(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            trust_coefficient=config.lars_trust,
            eps=0.0 if acl else 1e-8,
            lr_in_momentum=acl,
        )
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def learning_rate(step: int, total_steps: int, warmup_steps: int, config: PretrainConfig) -> float:
    """Per-iteration linear warm-up from ``warmup_start_lr``·lr to lr, then cosine to the floor."""
    peak, floor = config.lr, config.lr * config.min_lr_fraction
    if step < warmup_steps:
        start = config.warmup_start_lr * peak
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
