"""SimCLR (Chen et al., ICML 2020): the non-adversarial anchor of every table.

Two strong views, one BN, NT-Xent at T = 0.5. Its robust accuracy should be near zero:
if it is not, the attack (not the method) is broken.
"""
from __future__ import annotations

import torch

from bench.losses import nt_xent
from bench.method import Method, StepContext
from bench.models import ContrastiveModel
from bench.registry import register
from bench.views import StrongAugment


@register("simclr")
class SimCLR(Method):
    description = "SimCLR (Chen et al. 2020): non-adversarial anchor, NT-Xent on two strong views"
    projector = "simclr"
    augment = StrongAugment(crop_scale=(0.08, 1.0))

    @classmethod
    def preset_pretrain(cls, preset: str, dataset: str) -> dict:
        return {"optimizer": "lars", "lr": 5.0, "weight_decay": 1e-6, "epochs": 1000} if preset == "paper" else {}

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        views = torch.cat([self.augment(images, ctx.generator), self.augment(images, ctx.generator)])
        z1, z2 = model(views).chunk(2)
        return nt_xent(z1, z2, self.temperature), {}
