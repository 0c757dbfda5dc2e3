"""ACL, dual-stream "DS" form (Jiang et al., NeurIPS 2020) and its A-InfoNCE variants.

Loss = ½[NT-Xent(x1, x2; BN normal) + NT-Xent(a1, a2; BN pgd)], where (a1, a2) is PGD on
both views jointly maximising the adversarial pair's NT-Xent, with the model in eval mode
and the 'pgd' BN branch (released ``PGD_contrastive``). Every BN is dual, projector
included; ImageNet normalisation lives inside the model.

Deviations from the released code (small, documented): the resized crop interpolates
bilinearly (released: bicubic); the PGD random start is clamped to [0, 1] before the first
step (released: after it); each epoch drops its last partial batch (released: kept).

The released ACL loss has no clean<->adversarial positive pair, so its ``-ip``/``-hn``
variants are this suite's extension: they contrast [x1, x2, a1, a2] jointly with the
adversarial views tagged, so inferior positives and hard negatives have something to act on.
"""

from __future__ import annotations

import torch

from bench.engine.losses import nt_xent
from bench.engine.models import ContrastiveModel
from bench.engine.optim import ACL_LARS
from bench.engine.shards import Shards
from bench.engine.shards import of as shards_of
from bench.engine.views import StrongAugment
from bench.methodkit.method import Method, Published, StepContext, pretraining_pgd
from bench.methodkit.registry import register
from bench.methodkit.spec import ACL_MODEL, PublishedSettings, VariantSpec

RELEASED = (
    "VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py --ACL_DS (LARS schedule: bench.engine.optim.ACL_LARS)"
)
EXTENSION = (
    "suite extension, no released script: the schedule of VITA-Group/Adversarial-Contrastive-Learning "
    "train_simCLR.py, A-InfoNCE knobs at their defaults"
)
PAPER = {  # registered name -> dataset -> settings; train_simCLR.py uses the same settings for every dataset
    "acl": {"*": Published(source=RELEASED, pretrain=ACL_LARS)},
    "acl-ip": {"*": Published(source=EXTENSION, pretrain=ACL_LARS)},
    "acl-hn": {"*": Published(source=EXTENSION, pretrain=ACL_LARS)},
    "acl-iphn": {"*": Published(source=EXTENSION, pretrain=ACL_LARS)},
}
SMOKE = {  # registered name -> settings of the smoke preset
    name: Published(source="smoke: the harness defaults (bench.config.smoke_preset)")
    for name in ("acl", "acl-ip", "acl-hn", "acl-iphn")
}


def joint_nt_xent(
    model: ContrastiveModel, pair: torch.Tensor, bn: str, temperature: float, shards: Shards | None = None
) -> torch.Tensor:
    """NT-Xent of a stacked pair [x1; x2] forwarded together through one BN branch (negatives over
    every shard: the released ACL ran on one GPU, so its attack and loss see the whole batch)."""
    z1, z2 = model(pair, bn).chunk(2)
    if shards is not None:
        z1, z2 = shards.gather(z1), shards.gather(z2)
    return nt_xent(z1, z2, temperature)


@register("acl")
class ACL(Method):
    description = "ACL-DS (Jiang et al. 2020): NT-Xent on the clean pair (BN normal) + the PGD pair (BN pgd)"
    model = ACL_MODEL
    variant = VariantSpec(adversarial_views=True, note="suite extension: [x1, x2, a1, a2] contrasted jointly")
    augment = StrongAugment(crop_scale=(0.1, 1.0))
    published_settings = PublishedSettings(PAPER, SMOKE)

    def adversarial_pair(self, model: ContrastiveModel, pair: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """PGD on both views jointly, model in eval mode (mode restored afterwards).

        ``ctx.reference_style`` (``bench speed``) differentiates as the released ``PGD_contrastive``,
        into every parameter too: same adversaries, the released cost."""
        shards = shards_of(ctx)
        return pretraining_pgd(
            model,
            lambda inputs: joint_nt_xent(model, inputs, "pgd", self.params.temperature, shards),
            pair,
            ctx,
            start=shards.random_start(pair, ctx.attack.epsilon, views=2),
            parameter_gradients=ctx.reference_style,
        )

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        shards = shards_of(ctx)
        clean = torch.cat([shards.map(self.augment, images), shards.map(self.augment, images)])
        adversarial = self.adversarial_pair(model, clean, ctx)
        alpha = self.update_alpha(model, clean, adversarial, ctx)
        if not (self.variant.inferior_positives or self.variant.hard_negatives):
            loss_clean = joint_nt_xent(model, clean, "normal", self.params.temperature, shards)
            loss_adv = joint_nt_xent(model, adversarial, "pgd", self.params.temperature, shards)
            return 0.5 * (loss_clean + loss_adv), {"loss_clean": loss_clean.detach(), "loss_adv": loss_adv.detach()}
        z_clean = [shards.gather(z) for z in model(clean, "normal").chunk(2)]
        z_adv = [shards.gather(z) for z in model(adversarial, "pgd").chunk(2)]
        features = torch.stack([*z_clean, *z_adv], dim=1)  # [B, 4, D]: x1, x2, a1, a2
        loss = self.contrastive_loss(features, (False, False, True, True))
        return loss, {"alpha": alpha}
