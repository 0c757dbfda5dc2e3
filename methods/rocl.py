"""RoCL (Kim et al., NeurIPS 2020) and its A-InfoNCE variants (Yu et al., ECCV 2022).

One step, as in the released ``rocl_train.py`` (A-InfoNCE ``Asym-RoCL``, parent Kim-Minseon/RoCL):
1. two strong views x1, x2 (crop scale (0.08, 1));
2. a = instance-wise PGD on x1 towards x2: maximise the 2-view NT-Xent(a, x2), random start,
   model in eval mode (mode restored afterwards); paper: PGD-7, ε 0.0314, step 0.007;
3. ONE forward of [x1; x2; a] (a single BN for all views), NT-Xent over the 3 views with every
   column detached (each term ℓ(u→p) moves only its anchor u; the released similarity is
   ``z @ z.T.detach()``), summed over each anchor's two positives and averaged over anchors;
4. plus the regulariser (1/λ)·NT-Xent(a, x2), λ = 256, on a separate train-mode forward of [a; x2]
   that runs before step 3's (as released), also column-detached (the released
   ``pairwise_similarity`` detaches too).

The variants only change step 3 (``contrastive_term``): -ip weighs the clean→adversarial
terms by α and the adversarial→clean ones by 1−α (α = 0.2 fixed), -hn re-weights negatives
(HCL); the attack and the regulariser stay symmetric, as released.

Multi-GPU semantics (``bench.engine.shards``): the paper ran DDP on 2 GPUs × 256 with SyncBatchNorm,
the attack and the regulariser on each GPU's 256 images and the contrastive matrix gathered over
512; the paper preset reproduces it with ``pretrain.shards = 2`` (attack and regulariser per
shard, BatchNorm over the whole batch: ``synced_batch_norm``); ``shards = 1`` runs all three on
the whole batch.

Deviations from the released code (all small, documented in the report):
- views are augmented crop → flip → jitter → grayscale (RoCL: jitter → grayscale → flip → crop);
- ε is the harness's (8/255 = 0.03137 in the paper preset, RoCL: 0.0314).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.config import ConfigError
from bench.engine.attacks import pgd
from bench.engine.losses import a_infonce
from bench.engine.models import ContrastiveModel, model_mode
from bench.engine.released_losses import official_rocl_loss
from bench.engine.shards import of as shards_of
from bench.engine.views import StrongAugment
from bench.methodkit.method import Method, MethodParams, Published, StepContext
from bench.methodkit.registry import register
from bench.methodkit.spec import ModelSpec, PublishedSettings, VariantSpec

# Views of the contrastive matrix, in order: x1, x2, a (the adversarial one).
ADVERSARIAL = (False, False, True)

# ``a_infonce`` averages each anchor's terms over its positives (docs/design.md §3); the released RoCL
# loss sums them, (1/3N)·Σ of the six pair terms, so the 3-view loss is scaled by the
# number of positives per anchor. This keeps the regulariser's relative weight (1/256).
POSITIVES_PER_ANCHOR = 2.0


def rocl_lars(base_lr: float) -> dict[str, Any]:
    """``rocl_train.py``'s optimiser (overrides of ``PretrainConfig``) for a base lr (``--lr``).

    torchlars LARS (trust 1e-3, eps 1e-8) around SGD (momentum 0.9, wd ``--decay`` 1e-6), batch
    2 × 256, ``--epoch`` 1000. Released: ``GradualWarmupScheduler(multiplier 15, total_epoch 10)``
    stepped at the start of each epoch gives lr = base·(1 + 1.4·(e+1)) in epochs e = 0..9, i.e.
    base·2.4 at epoch 0 rising to 15·base at epoch 9, then ``CosineAnnealingLR(T_max 1000)`` from
    15·base towards 0. Our per-iteration linear warm-up from (2.4/15)·lr to lr = 15·base over 9
    epochs hits the released value at the first iteration of every warm-up epoch (it interpolates
    inside an epoch where the released lr is a step function), then cosine to 0. ``shards`` 2: the
    released DDP ran 2 processes × 256 (attack and regulariser per GPU, ``bench.engine.shards``).
    """
    return {
        "optimizer": "lars",
        "lars_trust": 1e-3,
        "lr": 15 * base_lr,
        "momentum": 0.9,
        "weight_decay": 1e-6,
        "warmup_epochs": 9,
        "warmup_start_lr": 2.4 / 15,
        "min_lr_fraction": 0.0,
        "epochs": 1000,
        "batch_size": 512,
        "shards": 2,
    }  # shell/rocl-*.sh: --nproc_per_node=2 --ngpu 2 --batch-size=256


# Every script runs ``rocl_train.py --k=7`` with its defaults ``--alpha 0.007`` (PGD step) and ``--lamda 256``.
RELEASED = {"attack_steps": 7, "attack_step_size": 0.007, "regularizer_lambda": 256.0}
IP = {"alpha": 0.2, "adv_weight": 1.0}  # --stop_grad --stpg_degree 0.2; --adv_weight never set (default 1)
SCRIPTS = "yqy2001/A-InfoNCE Asym-RoCL/shell/"
PAPER = {  # registered name -> dataset -> settings; "(default)": rocl_train.py's argument.py default
    "rocl": {
        "cifar10": Published(
            source=SCRIPTS + "rocl-cifar10.sh (--lr 0.1 default)", pretrain=rocl_lars(0.1), params=RELEASED
        ),
        "cifar100": Published(
            source=SCRIPTS + "rocl-cifar100.sh (--lr 0.1 default)", pretrain=rocl_lars(0.1), params=RELEASED
        ),
    },
    "rocl-ip": {
        "cifar10": Published(
            source=SCRIPTS + "rocl-IP-cifar10.sh (--stop_grad --stpg_degree 0.2)",
            pretrain=rocl_lars(0.1),
            params={**RELEASED, **IP},
        ),
        "cifar100": Published(
            source=SCRIPTS + "rocl-IP-cifar100.sh (--stop_grad --stpg_degree 0.2)",
            pretrain=rocl_lars(0.1),
            params={**RELEASED, **IP},
        ),
    },
    "rocl-hn": {
        "cifar10": Published(
            source=SCRIPTS + "rocl-HN-cifar10.sh (--HN --beta 1.0 --tau 0.12 --lr 0.2)",
            pretrain=rocl_lars(0.2),
            params={**RELEASED, "beta": 1.0, "tau_plus": 0.12},
        ),
        "cifar100": Published(
            source=SCRIPTS + "rocl-HN-cifar100.sh (--HN; β 1.0, τ 0.1, lr 0.1 default)",
            pretrain=rocl_lars(0.1),
            params={**RELEASED, "beta": 1.0, "tau_plus": 0.1},
        ),
    },
    "rocl-iphn": {
        "cifar10": Published(
            source=SCRIPTS + "rocl-IPHN-cifar10.sh (--HN --beta 1.0 --tau 0.12 --stop_grad --stpg_degree 0.2 --lr 0.3)",
            pretrain=rocl_lars(0.3),
            params={**RELEASED, **IP, "beta": 1.0, "tau_plus": 0.12},
        ),
        "cifar100": Published(
            source=SCRIPTS + "rocl-IPHN-cifar100.sh (--HN --stop_grad --stpg_degree 0.2 --lr 0.2; β 1.0, τ 0.1 "
            "default)",
            pretrain=rocl_lars(0.2),
            params={**RELEASED, **IP, "beta": 1.0, "tau_plus": 0.1},
        ),
    },
}
SMOKE = {  # registered name -> settings of the smoke preset: every A-InfoNCE knob of the variant set
    "rocl": Published(source="smoke: the harness's attack and defaults"),
    "rocl-ip": Published(source="smoke: IP knobs as in the paper scripts", params=IP),
    "rocl-hn": Published(source="smoke: HN knobs at the released defaults", params={"beta": 1.0, "tau_plus": 0.1}),
    "rocl-iphn": Published(source="smoke: IP and HN knobs", params={**IP, "beta": 1.0, "tau_plus": 0.1}),
}


@dataclass
class RoCLParams(MethodParams):
    """RoCL's own hyperparameters on top of the A-InfoNCE knobs.

    regularizer_lambda: λ of the (1/λ)·NT-Xent(a, x2) regulariser (released ``--lamda``).
    attack_steps / attack_step_size: RoCL's own PGD (7 steps of 0.007 in the paper);
        None uses the harness's ``attack.steps`` / ``attack.step_size``.
    """

    regularizer_lambda: float = 256.0
    attack_steps: int | None = None
    attack_step_size: float | None = None


def pair_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """RoCL's 2-view NT-Xent: every column detached (gradient reaches only the anchors)."""
    return a_infonce(torch.stack([z_a, z_b], dim=1), (False, False), temperature=temperature, detach_contrast=True)


@register("rocl")
class RoCL(Method):
    description = "RoCL (Kim et al. 2020): PGD on x1 towards x2 (eval mode), column-detached NT-Xent over [x1, x2, a]"
    # released: DDP + SyncBatchNorm, one BN over every GPU's rows (bench.engine.shards)
    model = ModelSpec(projector="rocl", synced_bn=True)
    # quirks='official': bench.engine.released_losses.official_rocl_loss
    variant = VariantSpec(adversarial_views=True, official_quirks=True)
    Params = RoCLParams
    augment = StrongAugment(crop_scale=(0.08, 1.0))
    published_settings = PublishedSettings(PAPER, SMOKE)

    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        super().check_params(params)
        for name in ("attack_steps", "attack_step_size"):
            value = getattr(params, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name}={value!r} is invalid: allowed numbers >= 0 or none (the harness's)")
        if params.regularizer_lambda <= 0:
            raise ConfigError(f"regularizer_lambda={params.regularizer_lambda!r} is invalid: allowed numbers > 0")

    def asymmetry(self) -> dict:
        """The A-InfoNCE arguments, with w as the released RoCL-IP means it: the clean/adversarial pair counted once.

        Released: w·[α·ℓ(x→a) + (1−α)·ℓ(a→x)] per pair, where the symmetric baseline counts
        ℓ(x→a) + ℓ(a→x); docs/design.md §3's c(a, v) = c(v, a) counts the IP term in both directions,
        so the formula path gets w/2 (total adversarial weight halves, as released). The
        'official' path implements the released sum itself and gets w unchanged.
        """
        arguments = super().asymmetry()
        if self.variant.inferior_positives and self.params.quirks != "official":
            arguments["adv_weight"] = self.params.adv_weight / 2
        return arguments

    def contrastive_term(self, features: torch.Tensor) -> torch.Tensor:
        """Step 3 over [x1, x2, a] with this variant's asymmetry, every column detached.

        Formula path: ``a_infonce`` ×2 turns its per-anchor mean into the released (1/3N)·Σ of
        pair terms. quirks='official': the released arithmetic, which computes that sum itself.
        """
        if self.params.quirks == "official":
            return official_rocl_loss(features, temperature=self.params.temperature, **self.asymmetry())
        return self.contrastive_loss(features, ADVERSARIAL, detach_contrast=True, scale=POSITIVES_PER_ANCHOR)

    # ------------------------------------------------------------------ step
    def adversarial_view(
        self,
        model: ContrastiveModel,
        x1: torch.Tensor,
        x2: torch.Tensor,
        ctx: StepContext,
        generator: torch.Generator | None = None,
    ):
        """a = PGD on x1 maximising NT-Xent(a, x2) over one shard, model in eval mode (mode restored
        afterwards); the random start comes from the shard's ``generator`` (default ``ctx.generator``).

        x2's embedding is computed once (eval mode: the same at every PGD step); the released
        ``RepresentationAdv.get_loss`` forwards [a; x2] at every step, which ``ctx.reference_style``
        (``bench speed``) does too: same adversary, the released cost."""
        shards = shards_of(ctx)
        temperature = self.params.temperature
        steps = ctx.attack.steps if self.params.attack_steps is None else self.params.attack_steps
        step_size = ctx.attack.step_size if self.params.attack_step_size is None else self.params.attack_step_size
        with model_mode(model, False):
            if ctx.reference_style:

                def objective(inputs: torch.Tensor) -> torch.Tensor:
                    z_adv, z_target = model(torch.cat([inputs, x2])).chunk(2)
                    return pair_nt_xent(shards.gather_shard(z_adv), shards.gather_shard(z_target), temperature)
            else:
                with torch.no_grad():
                    z_fixed = shards.gather_shard(model(x2))

                def objective(inputs: torch.Tensor) -> torch.Tensor:
                    return pair_nt_xent(shards.gather_shard(model(inputs)), z_fixed, temperature)

            return pgd(
                objective,
                x1,
                epsilon=ctx.attack.epsilon,
                step_size=step_size,
                steps=steps,
                generator=generator if generator is not None else ctx.generator,
            )

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        shards = shards_of(ctx)

        def shard_views(shard_images: torch.Tensor, generator: torch.Generator):
            x1, x2 = self.augment(shard_images, generator), self.augment(shard_images, generator)
            return x1, x2, self.adversarial_view(model, x1, x2, ctx, generator)

        x1, x2, adversarial = shards.map(shard_views, images)  # the attack sees its own shard, as released
        alpha = self.update_alpha(model, x1, adversarial, ctx)  # no-op: RoCL-IP keeps α fixed
        # The regulariser's train-mode forward comes first, as released (``get_loss`` runs before the
        # main forward): the BN running statistics, which finetuning loads, then see the same two
        # updates in the same order. It is per shard, as released (mean over GPUs under DDP).
        z_adv, z_target = model(torch.cat([adversarial, x2])).chunk(2)
        loss_regularizer = (
            shards.mean_over_shards(
                lambda a, t: pair_nt_xent(shards.gather_shard(a), shards.gather_shard(t), self.params.temperature),
                z_adv,
                z_target,
            )
            / self.params.regularizer_lambda
        )
        views = model(torch.cat([x1, x2, adversarial])).chunk(3)
        features = torch.stack([shards.gather(z) for z in views], dim=1)  # [B, 3, D], negatives over every shard
        loss_contrast = self.contrastive_term(features)
        logs = {"loss_contrast": loss_contrast.detach(), "loss_regularizer": loss_regularizer.detach()}
        if self.variant.inferior_positives:
            logs["alpha"] = alpha
        return loss_contrast + loss_regularizer, logs
