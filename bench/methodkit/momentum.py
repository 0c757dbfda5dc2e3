"""The momentum family: a method whose model carries a target network, an EMA of the trained one.

BYOL, MoCo, DINO and DynACL's key encoder share one recipe, which a method otherwise copies from
another's source: keep a frozen copy of the online encoder + projector, move it towards the online
weights by τ after each optimiser step, and finetune the online (or the target) encoder without
the extras. This module gives the recipe once (what solo-learn's ``BaseMomentumMethod`` gives its
methods), in this kit's terms:

- ``MomentumModel``: the online ``ContrastiveModel`` plus ``target`` (a deep copy, ``requires_grad``
  off, so the optimiser built from ``model.parameters()`` never moves it) and any extra trainable
  modules (a BYOL predictor). The target is built in ``build_model``, so it is part of
  ``state_dict``: ``pretrain.ckpt`` carries it and a resumed run continues bit-exactly.
- ``MomentumMethod``: τ per step (``momentum``: constant, or cosine-increasing from τ_base to 1 over
  the run's steps as in BYOL), ``update_target`` and the ``after_step`` hook that moves the target
  after every optimiser step (``update_timing = "after"``). DynACL's released code moves its key
  encoder *inside* the step, after the forwards and before the optimiser step; such a method sets
  ``update_timing = "in_step"`` and calls ``self.update_target(model, ctx)`` where its paper does.
- ``encoder_for_finetuning``: a trainable copy of the online encoder + projector (``finetune_network
  = "online"``, BYOL) or of the target (``"target"``, DynACL's ``model_encoder_k.pt``), never the
  extras, so the stored ``encoder.pt`` is a plain ``ContrastiveModel`` every later stage can load.

The EMA averages parameters only: BatchNorm statistics are the target's own (its forwards update
them), as in BYOL's and DynACL's released code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from bench.config import ConfigError
from bench.engine.models import ContrastiveModel
from bench.methodkit.method import Method, MethodParams, StepContext

SCHEDULES = ("constant", "cosine")
TIMINGS = ("after", "in_step")
FINETUNED = ("online", "target")


@dataclass
class MomentumParams(MethodParams):
    """The target network's settings on top of every method's.

    target_momentum: τ_base of target ← τ·target + (1 − τ)·online (BYOL: 0.996; solo-learn's default 0.99).
    momentum_schedule: 'cosine' (τ rises from τ_base to 1 over the run's steps: τ_k = 1 − (1 − τ_base)
        (cos(πk/K) + 1)/2, BYOL eq. in §3.2) or 'constant' (τ_base throughout, MoCo).
    """

    target_momentum: float = 0.99
    momentum_schedule: str = "cosine"


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's τ at step ``step`` of ``total``: τ_base at step 0, rising to 1 at ``total``."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total) + 1.0) / 2.0


class MomentumModel(ContrastiveModel):
    """A trained (online) ``ContrastiveModel`` plus its EMA copy and optional extra trainable modules.

    ``extras`` (e.g. ``predictor=nn.Sequential(...)``) become attributes of the model: trained with it,
    saved in its checkpoints, never copied into the target and never finetuned. The copy is registered
    under ``target_name`` (DynACL's subclass keeps its released name ``key``, so its checkpoints keep
    their keys); ``target`` reaches it whatever its name.
    """

    target_name: ClassVar[str] = "target"

    def __init__(self, model: ContrastiveModel, momentum: float = 0.99, **extras: nn.Module):
        super().__init__(model.encoder, model.projector, model.normalize, model.heads, spec=model.spec)
        if self.target_name in extras:
            raise ValueError(f"extra module name {self.target_name!r} is taken by the target network")
        frozen = copy.deepcopy(model)
        frozen.requires_grad_(False)
        self.add_module(self.target_name, frozen)
        for name, module in extras.items():
            self.add_module(name, module)
        self.momentum = float(momentum)  # τ used when ``update_target`` is called without one

    @property
    def target(self) -> ContrastiveModel:
        if self.target_name not in self._modules:  # during __init__, before it is registered
            raise AttributeError(f"{type(self).__name__} has no target network yet")
        return self._modules[self.target_name]

    def online(self) -> ContrastiveModel:
        """The online encoder + projector as a plain ``ContrastiveModel`` (modules shared, not copied)."""
        return ContrastiveModel(self.encoder, self.projector, self.normalize, self.heads, spec=self.spec)

    def online_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The online network's parameters, named as the target's (extras and target excluded)."""
        return list(self.online().named_parameters())

    @torch.no_grad()
    def update_target(self, momentum: float | None = None) -> None:
        """target ← τ·target + (1 − τ)·online, parameter by parameter (buffers untouched)."""
        tau = self.momentum if momentum is None else float(momentum)
        online = dict(self.online_parameters())
        for name, target in self.target.named_parameters():
            if name not in online:
                raise RuntimeError(f"target parameter {name!r} has no online counterpart")
            target.mul_(tau).add_(online[name].detach(), alpha=1.0 - tau)

    def finetuning_copy(self, network: str) -> ContrastiveModel:
        """A trainable copy of the ``'online'`` or ``'target'`` network, extras left out."""
        if network not in FINETUNED:
            raise ValueError(f"network={network!r} is invalid: allowed {list(FINETUNED)}")
        model = copy.deepcopy(self.online() if network == "online" else self.target)
        model.requires_grad_(True)
        return model


class MomentumMethod(Method):
    """Base of a method with a target network (``MomentumModel``); see the module docstring.

    A subclass builds its model with ``self.momentum_model(model, predictor=...)`` in ``build_model``
    (extras must exist before the harness builds the optimiser from ``model.parameters()``), reads the
    target through ``model.target`` in ``training_step`` (under ``torch.no_grad()`` for a stop-gradient
    target), and leaves the update to the harness (``after_step``).
    """

    Params: ClassVar[type[MethodParams]] = MomentumParams
    # 'after': the harness calls ``after_step`` after every optimiser step and it moves the target (BYOL,
    # solo-learn); 'in_step': the method calls ``update_target`` itself inside ``training_step`` (DynACL).
    update_timing: ClassVar[str] = "after"
    # The network stored as ``encoder.pt`` and finetuned: 'online' (BYOL) or 'target' (DynACL's key).
    finetune_network: ClassVar[str] = "online"

    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        super().check_params(params)
        if isinstance(params, MomentumParams):
            if not 0.0 <= params.target_momentum <= 1.0:
                raise ConfigError(f"target_momentum={params.target_momentum!r} is invalid: allowed numbers in [0, 1]")
            if params.momentum_schedule not in SCHEDULES:
                raise ConfigError(
                    f"momentum_schedule={params.momentum_schedule!r} is invalid: allowed {list(SCHEDULES)}"
                )

    def momentum_model(self, model: ContrastiveModel, **extras: nn.Module) -> MomentumModel:
        """``model`` with its target (τ_base as the model's default momentum) and ``extras``."""
        return MomentumModel(model, self.base_momentum(), **extras)

    def base_momentum(self) -> float:
        """τ_base (``params.target_momentum``; a method whose ``Params`` name it otherwise overrides this)."""
        return float(self.params.target_momentum)

    def momentum(self, ctx: StepContext) -> float:
        """τ of the update after step ``ctx.step``: τ_base, or BYOL's cosine over the run's steps."""
        base = self.base_momentum()
        if getattr(self.params, "momentum_schedule", "constant") == "constant":
            return base
        total = ctx.epochs * ctx.steps_per_epoch
        if total < 1:
            raise ValueError(
                f"{self.name}: StepContext.epochs={ctx.epochs!r} is invalid for momentum_schedule='cosine': "
                "allowed the run's total pretraining epochs (>= 1)"
            )
        return cosine_momentum(base, min(ctx.step, total), total)

    def update_target(self, model: nn.Module, ctx: StepContext) -> None:
        """Move the target of ``model`` by this step's τ (no-op for a model without one)."""
        if isinstance(model, MomentumModel):
            model.update_target(self.momentum(ctx))

    def after_step(self, model: ContrastiveModel, ctx: StepContext) -> None:
        """The harness's after-optimiser-step call: the EMA update when ``update_timing`` is 'after'."""
        if self.update_timing == "after":
            self.update_target(model, ctx)

    def encoder_for_finetuning(self, model: ContrastiveModel) -> ContrastiveModel:
        """A trainable copy of ``finetune_network`` without the extras (``model`` itself when it has no target)."""
        return model.finetuning_copy(self.finetune_network) if isinstance(model, MomentumModel) else model
