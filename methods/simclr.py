"""SimCLR (Chen et al., ICML 2020): the non-adversarial anchor of every table.

Two strong views, one BN, NT-Xent at T = 0.5. Its robust accuracy should be near zero:
if it is not, the attack (not the method) is broken.

SimCLR's own recipe (Chen et al.): crop scale (0.08, 1), a 2-layer MLP projector (d → d → 128),
no input normalisation, PyTorch's default initialisation. The paper preset trains it with ACL's
released LARS schedule (lr 5.0, warm-up from 0, cosine to 1e-6), the optimiser of the ``acl``
row it anchors. It is not ACL's S2S baseline (which shares ACL's 3-layer BN projector and
ImageNet normalisation): that would be ``acl`` without its adversarial stream.
"""

from __future__ import annotations

import torch

from bench.engine.losses import nt_xent
from bench.engine.models import ContrastiveModel
from bench.engine.optim import ACL_LARS
from bench.engine.shards import of as shards_of
from bench.engine.views import StrongAugment
from bench.methodkit.method import Method, Published, StepContext
from bench.methodkit.registry import register
from bench.methodkit.spec import ModelSpec, PublishedSettings

PAPER = {  # registered name -> dataset -> settings
    "simclr": {
        "*": Published(
            source="VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py (ACL's LARS schedule, the optimiser of "
            "the acl row this anchor sits beside; bench.engine.optim.ACL_LARS)",
            pretrain=ACL_LARS,
        ),
    },
}
SMOKE = {"simclr": Published(source="smoke: the harness defaults (bench.config.smoke_preset)")}


@register("simclr")
class SimCLR(Method):
    description = "SimCLR (Chen et al. 2020): non-adversarial anchor, NT-Xent on two strong views"
    model = ModelSpec(projector="simclr")
    augment = StrongAugment(crop_scale=(0.08, 1.0))
    published_settings = PublishedSettings(PAPER, SMOKE)

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        shards = shards_of(ctx)  # views from each shard's generator, negatives over every shard
        views = torch.cat([shards.map(self.augment, images), shards.map(self.augment, images)])
        z1, z2 = model(views).chunk(2)
        return nt_xent(shards.gather(z1), shards.gather(z2), self.params.temperature), {}
