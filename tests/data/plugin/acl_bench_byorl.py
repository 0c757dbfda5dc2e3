"""BYORL (Gowal et al. 2020) as an acl-bench plugin: BYOL's momentum target and predictor, PGD on its loss.

The online network (encoder + projector) and a predictor regress the target network's projection of
the other view; the target is an EMA of the online network that the harness moves after every
optimiser step (``MomentumMethod.after_step``), τ rising from ``target_momentum`` to 1 (cosine).
The adversarial views maximise that same regression loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError
from bench.engine.models import ContrastiveModel
from bench.engine.shards import of as shards_of
from bench.engine.views import StrongAugment
from bench.methodkit.method import Published, StepContext, pretraining_pgd
from bench.methodkit.momentum import MomentumMethod, MomentumParams
from bench.methodkit.registry import register
from bench.methodkit.spec import ModelSpec, PublishedSettings, VariantSpec

PROJECTION = 128  # every built-in projector but 'none' ends in 128 features
SMOKE = {"byorl": Published(source="smoke: the harness defaults, BYOL's cosine τ from 0.99")}


@dataclass
class BYORLParams(MomentumParams):
    """predictor_hidden: width of the predictor MLP (BYOL: 4096; small for the smoke CNN)."""

    predictor_hidden: int = 256


def regression(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's loss, 2 − 2·cos(p, z), averaged; the target side carries no gradient."""
    return (2 - 2 * F.cosine_similarity(predictions, targets.detach(), dim=-1)).mean()


@register("byorl")
class BYORL(MomentumMethod):
    description = "BYORL (Gowal et al. 2020): BYOL with PGD on the BYOL loss (example plugin)"
    model = ModelSpec(projector="advcl")  # Linear-BN-ReLU-Linear, the closest to BYOL's
    # adversarial views (reports list it after the non-adversarial anchors), but a regression loss,
    # not self.contrastive_loss: no -ip/-hn/-iphn variants
    variant = VariantSpec(adversarial_views=True, uses_contrastive_loss=False)
    selected_by_all = False  # --methods all stays the A-InfoNCE table; select it by name
    ignored_params = ("temperature",)  # no InfoNCE: a user value would change nothing
    Params = BYORLParams
    published_settings = PublishedSettings(smoke=SMOKE)
    augment = StrongAugment(crop_scale=(0.08, 1.0))

    @classmethod
    def check_params(cls, params: BYORLParams) -> None:
        super().check_params(params)  # temperature, target_momentum, momentum_schedule, ...
        if params.predictor_hidden < 1:
            raise ConfigError(f"predictor_hidden={params.predictor_hidden!r} is invalid: allowed integers >= 1")

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        """The online model, its target and the predictor, all built before the optimiser is."""
        width = self.params.predictor_hidden
        predictor = nn.Sequential(
            nn.Linear(PROJECTION, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, PROJECTION)
        )
        return self.momentum_model(super().build_model(arch, in_channels), predictor=predictor)

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        shards = shards_of(ctx)  # each shard's generator draws its views
        views = torch.cat([shards.map(self.augment, images), shards.map(self.augment, images)])
        with torch.no_grad():
            first, second = model.target(views).chunk(2)
            targets = torch.cat([second, first])  # each view predicts the target of the other

        def objective(inputs: torch.Tensor) -> torch.Tensor:
            return regression(model.predictor(model(inputs)), targets)

        adversarial = pretraining_pgd(model, objective, views, ctx)
        loss_clean = objective(views)
        loss_adv = objective(adversarial)
        return loss_clean + loss_adv, {"loss_clean": loss_clean.detach(), "loss_adv": loss_adv.detach()}
