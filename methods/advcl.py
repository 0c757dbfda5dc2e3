"""AdvCL (Fan et al., NeurIPS 2021) and its A-InfoNCE variants (Yu et al., ECCV 2022).

One step, as in the released ``pretraining_advCL.py`` (A-InfoNCE ``Asym-AdvCL``, parent
LijieFan/AdvCL):
1. views: x1, x2 strong augmentations (crop scale (0.2, 1)); ``images_org`` = random crop
   (padding size/8) + flip; HFC = high-frequency component of ``images_org`` (FFT, radius 8
   at 32 px, scaled with the image size; real part, unclamped);
2. x_adv = PGD on ``images_org`` (random start) maximising the contrastive loss of
   [x_adv, x1, x2, HFC] through BN 'pgd', model in TRAIN mode (as released: BN running
   statistics follow the PGD iterates); the attack maximises the plain (non-HN, no
   stop-gradient) loss in every variant (released ``--attack_ori``);
3. x_ce = PGD on ``images_org`` maximising the pseudo-label cross-entropy summed over the batch
   and the five heads (K = 2, 10, 50, 100, 500), BN 'pgd_ce', train mode;
4. loss = contrastive loss ×(T/0.07) over [x_adv, x1, x2, HFC] + 0.2·mean_K CE(head_K(x_ce));
   the variants change only the contrastive term (``contrastive_term``), and -ip variants
   adapt α per step from the clean/adversarial feature distance (``update_alpha``).

Deviations from the released code (none changes a gradient or an adversarial example):
- the 'normal'-branch embeddings of x1, x2 and HFC are computed once per step and reused,
  detached, by every PGD iteration and (with their graph) by the loss; the released code
  recomputes them at each PGD iteration, which only moves the running statistics of the
  'normal' BN branch (never used by finetuning, which loads 'pgd') and of the projector BN;
- x_ce goes through the encoder and the heads only (released: also through the projector,
  whose output is unused; again only projector BN running statistics differ);
- the random start is clamped to [0, 1] (``bench.engine.attacks``), the released one is not
  clamped before the first step;
- BatchNorm statistics: the released run used DataParallel on 2 GPUs with apex's SyncBN
  conversion, which is inactive without torch.distributed, i.e. per-GPU BN over 256
  (docs/fidelity.md) while the attack and the loss see the whole batch; the paper preset
  reproduces it with ``pretrain.shards = 2`` (``bench.engine.shards``, docs/speed.md), ``shards = 1`` is BN over 512;
- pseudo-labels: the released files cluster features of an ImageNet-pretrained contrastive
  model (ClusterFit); pass such a file as ``pseudo_labels``, or let ``setup`` cluster the
  features of any encoder (``pseudo_label_encoder``) or, as a stand-in, raw pixels
  (``bench.methodkit.pseudo_labels``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ConfigError
from bench.engine.attacks import pgd, project
from bench.engine.losses import a_infonce
from bench.engine.models import ContrastiveModel, model_mode
from bench.engine.released_losses import official_advcl_loss
from bench.engine.shards import Shards
from bench.engine.shards import of as shards_of
from bench.engine.views import StrongAugment, WeakAugment, high_frequency_component
from bench.methodkit.method import Method, MethodParams, Published, StepContext
from bench.methodkit.pseudo_labels import pseudo_labels
from bench.methodkit.registry import register
from bench.methodkit.spec import ModelSpec, PublishedSettings, VariantSpec

# Views of the contrastive matrix, in order: x_adv, x1, x2, HFC.
ADVERSARIAL = (True, False, False, False)
BASE_TEMPERATURE = 0.07  # SupCon scaling: the loss is multiplied by T / 0.07
PSEUDO_LABEL_KS = (2, 10, 50, 100, 500)


def advcl_sgd(lr: float) -> dict[str, Any]:
    """``pretraining_advCL.py``'s optimiser at ``--learning_rate lr`` (overrides of ``PretrainConfig``).

    SGD (momentum 0.9, wd 1e-4), batch 512, ``--epoch 400``, warm-up from 0.01 over 10 epochs (on
    for batch > 256), cosine to lr·1e-3 (``lr_decay_rate ** 3``). Kept approximately: the released
    warm-up ends at the cosine's value at epoch 10 (0.998·lr) and the loop runs 402 epochs.
    ``shards`` 2 (``bench.engine.shards``): ``nn.DataParallel`` over every visible GPU (a single one is
    refused) and the A-InfoNCE README's "2 Tesla V100 GPUs", i.e. per-GPU BatchNorm over 256.
    """
    return {
        "optimizer": "sgd",
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 512,
        "warmup_epochs": 10,
        "warmup_start_lr": 0.01 / lr,
        "min_lr_fraction": 1e-3,
        "epochs": 400,
        "shards": 2,
    }


SCRIPTS = "yqy2001/A-InfoNCE Asym-AdvCL/shell/"
RELEASED = {"ce_weight": 0.2, "hfc_radius": 8}  # pretraining_advCL.py defaults: --ce_weight 0.2, --radius 8
IP10 = {"alpha": 0.2, "adaptive_epochs": 30, "d_min": 0.4}  # --stpg_degree 0.2 --stop_grad_adaptive 30 (d_min default)
IP100 = {"alpha": 0.3, "adaptive_epochs": 20, "d_min": 0.5}  # --stpg_degree 0.3 --stop_grad_adaptive 20 --d_min 0.5
PAPER = {  # registered name -> dataset -> settings: each script's flags; the rest are pretraining_advCL.py defaults
    "advcl": {
        "cifar10": Published(SCRIPTS + "cifar10/advcl-cifar10.sh (--learning_rate 0.5)", advcl_sgd(0.5), RELEASED),
        "cifar100": Published(SCRIPTS + "cifar100/advcl-cifar100.sh (--learning_rate 0.5)", advcl_sgd(0.5), RELEASED),
    },
    "advcl-ip": {
        "cifar10": Published(
            SCRIPTS + "cifar10/advcl-IP-cifar10.sh (--stop_grad --stpg_degree 0.2 --adv_weight 1.2 "
            "--stop_grad_adaptive 30 --learning_rate 1.)",
            advcl_sgd(1.0),
            {**RELEASED, **IP10, "adv_weight": 1.2},
        ),
        "cifar100": Published(
            SCRIPTS + "cifar100/advcl-IP-cifar100.sh (--learning_rate 2. --stpg_degree 0.3 "
            "--stop_grad --adv_weight 1.5 --stop_grad_adaptive 20 --d_min 0.5)",
            advcl_sgd(2.0),
            {**RELEASED, **IP100, "adv_weight": 1.5},
        ),
    },
    "advcl-hn": {
        "cifar10": Published(
            SCRIPTS + "cifar10/advcl-HN-cifar10.sh (--learning_rate 1.2 --attack_ori --HN --beta 1.0 --tau_plus 0.12)",
            advcl_sgd(1.2),
            {**RELEASED, "beta": 1.0, "tau_plus": 0.12},
        ),
        "cifar100": Published(
            SCRIPTS + "cifar100/advcl-HN-cifar100.sh (--learning_rate 2. --attack_ori --HN --beta 1. --tau_plus 0.01)",
            advcl_sgd(2.0),
            {**RELEASED, "beta": 1.0, "tau_plus": 0.01},
        ),
    },
    "advcl-iphn": {
        "cifar10": Published(
            SCRIPTS + "cifar10/advcl-IPHN-cifar10.sh (--learning_rate 2. --stpg_degree 0.2 "
            "--stop_grad --adv_weight 0.7 --stop_grad_adaptive 30 --attack_ori --HN; β 1.0, τ⁺ 0.1 "
            "defaults)",
            advcl_sgd(2.0),
            {**RELEASED, **IP10, "adv_weight": 0.7, "beta": 1.0, "tau_plus": 0.1},
        ),
        "cifar100": Published(
            SCRIPTS + "cifar100/advcl-IPHN-cifar100.sh (--learning_rate 2. --stpg_degree 0.3 "
            "--stop_grad --adv_weight 1.5 --stop_grad_adaptive 20 --d_min 0.5 --attack_ori --HN "
            "--beta 1.0 --tau 0.01)",
            advcl_sgd(2.0),
            {**RELEASED, **IP100, "adv_weight": 1.5, "beta": 1.0, "tau_plus": 0.01},
        ),
    },
}
SMOKE_IP = {"alpha": 0.2, "adv_weight": 1.0, "adaptive_epochs": 2, "d_min": 0.4}
SMOKE = {  # registered name -> settings of the smoke preset
    "advcl": Published("smoke: the harness defaults (bench.config.smoke_preset)"),
    "advcl-ip": Published("smoke: adaptive α on, so the schedule is exercised in 2 epochs", params=SMOKE_IP),
    "advcl-hn": Published("smoke: HN knobs at the released defaults", params={"beta": 1.0, "tau_plus": 0.1}),
    "advcl-iphn": Published("smoke: both", params={**SMOKE_IP, "beta": 1.0, "tau_plus": 0.1}),
}


@dataclass
class AdvCLParams(MethodParams):
    """AdvCL's own hyperparameters on top of the A-InfoNCE knobs.

    ce_weight: weight of the pseudo-label cross-entropy on x_ce (released 0.2).
    hfc_radius: radius of the zeroed low frequencies at 32 px (scaled to the image size).
    pseudo_labels: a file of labels ``pseudo_train_{K}`` (AdvCL's .pkl, or .npz); '' = compute.
    pseudo_label_encoder: a 'bench' encoder checkpoint whose features are clustered when no
        file is given; '' = cluster raw pixels (standardised, PCA to 50 dims): a smoke stand-in.
    pseudo_label_ks: the cluster counts, one linear head each.
    """

    ce_weight: float = 0.2
    hfc_radius: int = 8
    pseudo_labels: str = ""
    pseudo_label_encoder: str = ""
    pseudo_label_ks: tuple[int, ...] = PSEUDO_LABEL_KS


def head_name(k: int) -> str:
    return f"pseudo_{k}"


@register("advcl")
class AdvCL(Method):
    description = "AdvCL (Fan et al. 2021): [x_adv, x1, x2, HFC] contrast + pseudo-label CE adversary, 3 BN branches"
    model = ModelSpec(
        branches=("normal", "pgd", "pgd_ce"),
        projector="advcl",
        conv_init="kaiming_normal",  # torchvision-style ResNet of the released code
        finetune_bn="pgd",
    )
    # quirks='official': bench.engine.released_losses.official_advcl_loss
    variant = VariantSpec(adversarial_views=True, official_quirks=True)
    Params = AdvCLParams
    augment = StrongAugment(crop_scale=(0.2, 1.0))
    weak_augment = WeakAugment()
    published_settings = PublishedSettings(PAPER, SMOKE)

    def __init__(self, params: MethodParams | None = None):
        super().__init__(params)
        self.pseudo_labels: dict[int, torch.Tensor] | None = None

    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        super().check_params(params)
        ks = params.pseudo_label_ks
        if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
            raise ConfigError(f"pseudo_label_ks={ks!r} is invalid: allowed distinct integers >= 1")
        if params.ce_weight < 0:
            raise ConfigError(f"ce_weight={params.ce_weight!r} is invalid: allowed numbers >= 0")
        if params.hfc_radius < 0:
            raise ConfigError(f"hfc_radius={params.hfc_radius!r} is invalid: allowed integers >= 0")

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        """The contrastive model plus one linear pseudo-label head per K on the pooled feature.

        Heads are built here (before the optimiser) with K outputs each; when fewer than K
        clusters exist (k-means on fewer than K images) the extra outputs are never targets.
        """
        model = super().build_model(arch, in_channels)
        for k in self.params.pseudo_label_ks:
            model.heads[head_name(k)] = nn.Linear(model.feature_dim, k)
        return model

    def setup(self, model: ContrastiveModel, train_images: torch.Tensor, ctx: StepContext) -> None:
        """Load the pseudo-label file, or compute labels by k-means (cached in the run directory)."""
        ks = self.params.pseudo_label_ks
        labels = pseudo_labels(
            train_images,
            ks,
            file=self.params.pseudo_labels,
            encoder=self.params.pseudo_label_encoder,
            run_dir=ctx.run_dir,
            seed=int(ctx.generator.initial_seed()) % (2**31),
            device=ctx.device,
            label=self.name,
        )
        self.pseudo_labels = {k: torch.as_tensor(labels[k], dtype=torch.long, device=ctx.device) for k in ks}

    def pseudo_label_loss(
        self, model: ContrastiveModel, x: torch.Tensor, indices: torch.Tensor, shards: Shards | None = None
    ) -> torch.Tensor:
        """Mean over the K heads of the cross-entropy on the 'pgd_ce' feature (labels -1 ignored),
        over every shard of the batch (the released DataParallel gathers the logits)."""
        return self.pseudo_label_loss_of_feature(model, model.features(x, "pgd_ce"), indices, shards)

    def head_logits(
        self, model: ContrastiveModel, feature: torch.Tensor, indices: torch.Tensor, k: int, shards: Shards | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head K's logits and pseudo-labels of the batch, gathered over every shard."""
        logits, target = model.heads[head_name(k)](feature), self.pseudo_labels[k][indices]
        if shards is not None:
            logits, target = shards.gather(logits), shards.gather(target)
        return logits, target

    def pseudo_label_loss_of_feature(
        self, model: ContrastiveModel, feature: torch.Tensor, indices: torch.Tensor, shards: Shards | None = None
    ) -> torch.Tensor:
        losses = []
        for k in self.params.pseudo_label_ks:
            logits, target = self.head_logits(model, feature, indices, k, shards)
            summed = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
            losses.append(summed / (target >= 0).sum().clamp(min=1))
        return torch.stack(losses).mean()

    def pseudo_label_attack_objective(
        self, model: ContrastiveModel, feature: torch.Tensor, indices: torch.Tensor, shards: Shards | None = None
    ) -> torch.Tensor:
        """What x_ce maximises, from its 'pgd_ce' feature: ce_weight · Σ_K sum-CE(head_K) / (number of
        heads), labels -1 ignored, over every shard.

        As released (``AttackPGD.forward``: ``F.cross_entropy(..., size_average=False, ignore_index=-1) / 5``
        summed over the heads, times ``ce_weight``). It is not ``pseudo_label_loss`` rescaled: the
        training term divides each head by its own number of valid labels, so with ignored labels
        the heads would be weighted differently and the sign step could differ.
        """
        ks = self.params.pseudo_label_ks
        summed = torch.stack(
            [
                F.cross_entropy(*self.head_logits(model, feature, indices, k, shards), ignore_index=-1, reduction="sum")
                for k in ks
            ]
        ).sum()
        return self.params.ce_weight * summed / len(ks)

    # ------------------------------------------------------------------ step
    def supcon_loss(self, features: torch.Tensor, asymmetry: dict[str, Any]) -> torch.Tensor:
        """AdvCL's loss over [x_adv, x1, x2, HFC], ×T/0.07 (SupCon scaling): the formulas
        (``a_infonce``) or, with quirks='official', the released arithmetic (``official_advcl_loss``)."""
        settings = dict(temperature=self.params.temperature, scale=self.params.temperature / BASE_TEMPERATURE)
        if self.params.quirks == "official":
            return official_advcl_loss(features, **settings, **asymmetry)
        return a_infonce(features, ADVERSARIAL, **settings, **asymmetry)

    def contrastive_term(self, features: torch.Tensor) -> torch.Tensor:
        """The training loss's contrastive term, with this variant's asymmetry (``Method.asymmetry``)."""
        return self.supcon_loss(features, self.asymmetry())

    def attack_objective(self, features: torch.Tensor) -> torch.Tensor:
        """The loss x_adv maximises: plain InfoNCE (no HN, no stop-gradient), as ``--attack_ori``.

        With quirks='official' the released ``ori_SupConLoss`` is reproduced, including the
        w² weight of the clean-anchor block when w ≠ 1 (IP/IPHN scripts).
        """
        weight = self.params.adv_weight if self.variant.inferior_positives else 1.0
        return self.supcon_loss(features, {"alpha": None, "adv_weight": weight, "hard_negatives": None})

    def adversaries(
        self,
        model: ContrastiveModel,
        images_org: torch.Tensor,
        clean: Sequence[torch.Tensor],
        indices: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_adv (contrastive, BN 'pgd') and x_ce (pseudo-label CE, BN 'pgd_ce'), model in train mode.

        The released code updates both with the sign of their own gradient of one summed
        loss; each view is its own forward with its own BN, so two separate PGD runs are the same.
        ``clean`` are the detached 'normal' embeddings of x1, x2, HFC (fixed during PGD). Each
        shard's random starts come from its generator; the objectives see every shard.
        """
        shards = shards_of(ctx)
        epsilon = ctx.attack.epsilon
        settings = dict(epsilon=epsilon, step_size=ctx.attack.step_size, steps=ctx.attack.steps)
        clean = [shards.gather(z) for z in clean]
        with model_mode(model, True):
            x_adv = pgd(
                lambda inputs: self.attack_objective(torch.stack([shards.gather(model(inputs, "pgd")), *clean], dim=1)),
                images_org,
                start=shards.random_start(images_org, epsilon),
                **settings,
            )
            x_ce = pgd(
                lambda inputs: self.pseudo_label_attack_objective(
                    model, model.features(inputs, "pgd_ce"), indices, shards
                ),
                images_org,
                start=shards.random_start(images_org, epsilon),
                **settings,
            )
        return x_adv, x_ce

    def released_adversaries(
        self,
        model: ContrastiveModel,
        images_org: torch.Tensor,
        views: Sequence[torch.Tensor],
        indices: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``adversaries`` computed as the released ``AttackPGD.forward`` does (``bench speed``'s
        reference-style path): one loop over both iterates, every step forwarding x_cl, x_ce (through
        the projector too, unused) and again the clean views x1, x2, HFC, one summed loss. Same
        adversaries (sign steps of each iterate's own gradient), the released cost."""
        shards = shards_of(ctx)
        epsilon, step_size = ctx.attack.epsilon, ctx.attack.step_size
        starts = [shards.random_start(images_org, epsilon) for _ in range(2)]
        x_cl, x_ce = [images_org.clone() if start is None else project(start, images_org, epsilon) for start in starts]
        with model_mode(model, True):
            for _ in range(ctx.attack.steps):
                x_cl, x_ce = x_cl.requires_grad_(True), x_ce.requires_grad_(True)
                feature_ce = model.features(x_ce, "pgd_ce")
                model.project(feature_ce, "pgd_ce")  # released: contrast=True on x_ce, output unused
                features = [model(x_cl, "pgd")] + [model(view, "normal") for view in views]
                loss = self.attack_objective(torch.stack([shards.gather(z) for z in features], dim=1))
                loss = loss + self.pseudo_label_attack_objective(model, feature_ce, indices, shards)
                grad_cl, grad_ce = torch.autograd.grad(loss, [x_cl, x_ce])
                x_cl = project(x_cl.detach() + step_size * grad_cl.sign(), images_org, epsilon)
                x_ce = project(x_ce.detach() + step_size * grad_ce.sign(), images_org, epsilon)
        return x_cl.detach(), x_ce.detach()

    def hfc_radius(self, images: torch.Tensor) -> int:
        """The released radius 8 is for 32 px images: scale it to this size, at least 1."""
        return max(1, round(self.params.hfc_radius * images.shape[-1] / 32))

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        if self.pseudo_labels is None:
            raise RuntimeError(f"{self.name}: setup() must run before training_step (it builds the pseudo-labels)")
        if ctx.indices is None:
            raise ValueError(f"{self.name}: ctx.indices (dataset indices of the batch) is needed for the pseudo-labels")
        indices = ctx.indices.to(self.pseudo_labels[self.params.pseudo_label_ks[0]].device)
        shards = shards_of(ctx)
        x1, x2 = shards.map(self.augment, images), shards.map(self.augment, images)
        images_org = shards.map(self.weak_augment, images)
        hfc = high_frequency_component(images_org, radius=self.hfc_radius(images))
        # One forward per clean view (its own BN batch, as released); reused by the attack and the loss.
        clean = [model(view, "normal") for view in (x1, x2, hfc)]
        if ctx.reference_style:
            x_adv, x_ce = self.released_adversaries(model, images_org, (x1, x2, hfc), indices, ctx)
        else:
            x_adv, x_ce = self.adversaries(model, images_org, [z.detach() for z in clean], indices, ctx)
        alpha = self.update_alpha(model, images_org, x_adv, ctx)
        views = [model(x_adv, "pgd"), *clean]
        features = torch.stack([shards.gather(z) for z in views], dim=1)  # [B, 4, D]: x_adv, x1, x2, HFC
        loss_contrast = self.contrastive_term(features)
        if ctx.reference_style:  # released: x_ce through the projector too (output unused)
            feature_ce = model.features(x_ce, "pgd_ce")
            model.project(feature_ce, "pgd_ce")
            loss_ce = self.pseudo_label_loss_of_feature(model, feature_ce, indices, shards)
        else:
            loss_ce = self.pseudo_label_loss(model, x_ce, indices, shards)
        logs = {"loss_contrast": loss_contrast.detach(), "loss_ce": loss_ce.detach()}
        if self.variant.inferior_positives:
            logs["alpha"] = alpha
        return loss_contrast + self.params.ce_weight * loss_ce, logs
