"""DynACL and DynACL++ (Luo, Wang, Wang, ICLR 2023) and their A-InfoNCE variants.

DynACL, as coded in PKU-ML/DYNACL ``train_DynACL.py`` (built on ACL's dual-stream form):
1. two views of strength s_e (``bench.engine.annealing``: crop scale (1 − 0.9·s, 1), jitter and
   grayscale scaled by s; s steps from 1 down by P/E every P = 50 epochs);
2. a momentum key encoder: the model is a pair, the trained (query) encoder and an EMA copy
   (key, m = 0.99, parameters only: BN statistics are the key's own, ``requires_grad`` off).
   View 1 goes through the query, view 2 through the key, in the clean stream, the
   adversarial stream and inside the attack (released ``resnet18_momentum(..., swap=True)``);
3. PGD-5 (ε 8/255, step 2/255, random start) on both views jointly maximising the adversarial
   pair's NT-Xent, model in eval mode, BN ``pgd``;
4. L = ½[(2 − w_e)·NT-Xent(clean pair; BN normal) + w_e·NT-Xent(adversarial pair; BN pgd)],
   w_e = min(1 + ⌊epoch/P⌋·(P/E)·λ, 2), 1-indexed epoch, λ = 2/3;
5. the key is updated after the forwards and before the optimiser step (the released order),
   which is inside ``training_step``: the key moves towards the query of *before* this step.
The encoder saved for downstream use is the key (``model_encoder_k.pt``; ``assign_label.py``
names it as its input): ``encoder_for_finetuning`` returns it.

``form="air-rcs"``: the simpler re-implementation of GodXuxilie/Enhancing_ACL_via_AIR
(``pretraining.py --DynAug``) and GodXuxilie/Efficient_ACL_via_RCS (``DynACL_RCS.py``): no key
encoder (both views through the trained model, one BN batch), and w = 1 + ω with
ω = λ·(1 − s_e), which steps with the strength, one epoch after the released w. The RCS loss is
this one; AIR's lacks the ½ (a scale that LARS's trust ratio mostly absorbs).

DynACL++ = DynACL followed by the LP-AFT post-processing stage (``bench.methodkit.post``): a run option
(``dynacl++`` or ``--post pp``), which DynACL lists in ``post_forms`` because its paper publishes it;
its settings are the ``dynacl++`` rows below, and ``quirks='official'`` starts its TRADES attack at x.

Deviations from the released code (all small, documented in docs/methods-newer.md): views are
augmented on the device (bilinear resized crop, fixed jitter order); the PGD random start is
clamped to [0, 1] before the first step; the per-epoch cosine learning rate is approximated
per iteration (``PAPER``); each epoch drops its last partial batch.

The released loss has no clean<->adversarial positive pair, so the ``-ip``/``-hn``/``-iphn``
variants are this suite's extension, as for ACL: [x1, x2, a1, a2] (x2 and a2 through the key
encoder) contrasted jointly with the adversarial views tagged; the augmentation schedule and the
key encoder stay, the w_e reweighting (which has no counterpart in one joint loss) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.config import ConfigError
from bench.engine.annealing import (
    ANNEAL_LAMBDA,
    ANNEAL_PERIOD,
    annealed_augment,
    augmentation_strength,
    dynacl_adversarial_weight,
    reweighting_omega,
)
from bench.engine.losses import nt_xent
from bench.engine.models import ContrastiveModel
from bench.methodkit.method import MethodParams, Published, StepContext, pretraining_pgd
from bench.methodkit.momentum import MomentumMethod, MomentumModel
from bench.methodkit.post import SMOKE_POST_PARAMS, PostForm
from bench.methodkit.registry import register
from bench.methodkit.spec import ACL_MODEL, PublishedSettings, VariantSpec

FORMS = ("dynacl", "air-rcs")

# LARS (ACL's form) lr 5.0, wd 1e-6, batch 512, 1000 epochs. train_DynACL.py steps its cosine once
# per epoch: lr = 5·(e+1)/10 in epochs e = 0..9, then cosine from epoch 10 to a 1e-6 floor. Our
# per-iteration schedule matches it at the first step of each warm-up epoch with a 9-epoch ramp
# from 0.1·lr, and then lags the released cosine by one epoch (it interpolates inside epochs).
DYNACL_PRETRAIN = {
    "optimizer": "lars-acl",
    "lr": 5.0,
    "weight_decay": 1e-6,
    "warmup_epochs": 9,
    "warmup_start_lr": 0.1,
    "min_lr_fraction": 1e-6 / 5.0,
    "epochs": 1000,
    "batch_size": 512,
}
DYNACL_SOURCE = "PKU-ML/DYNACL train_DynACL.py (argparse defaults, README command)"
DYNACL_PARAMS = {"form": "dynacl", "key_momentum": 0.99, "anneal_lambda": 2 / 3, "anneal_period": 50}
# LPAFT.py / LPAFT_AFF.py defaults; assign_label.py hard-codes K = 10, also for CIFAR-100 and STL-10.
DYNACL_POST = {
    "post_clusters": 10,
    "post_head_epochs": 10,
    "post_epochs": 25,
    "post_milestones": (10, 20),
    "post_batch_size": 512,
    "post_attack_steps": 10,
}

PAPER = {  # registered name -> dataset ('*': any) -> settings; variants use their base's row
    "dynacl": {"*": Published(source=DYNACL_SOURCE, pretrain=DYNACL_PRETRAIN, params=DYNACL_PARAMS)},
    "dynacl++": {
        "*": Published(
            source=f"{DYNACL_SOURCE}; PKU-ML/DYNACL assign_label.py, LPAFT.py and LPAFT_AFF.py (post stage)",
            pretrain=DYNACL_PRETRAIN,
            params={**DYNACL_PARAMS, **DYNACL_POST},
        )
    },
}
SMOKE = {  # registered name -> settings of the smoke preset (8 epochs on the digits)
    "dynacl": Published(
        source="smoke: the strength steps every 2 of 8 epochs (1, 0.75, 0.5, 0.25)", params={"anneal_period": 2}
    ),
    "dynacl++": Published(
        source="smoke: strength every 2 epochs; post stage 1 + 2 epochs, batch 64, PGD-2",
        params={"anneal_period": 2, **SMOKE_POST_PARAMS},
    ),
}


@dataclass
class DynACLParams(MethodParams):
    """DynACL's own hyperparameters on top of the A-InfoNCE knobs.

    form: 'dynacl' (train_DynACL.py: EMA key encoder, released w_e) or 'air-rcs' (the AIR/RCS
        re-implementation: no key encoder, w = 1 + λ(1 − s_e)).
    key_momentum: m of the key encoder's EMA, key ← m·key + (1 − m)·query (form 'dynacl').
    anneal_lambda: λ (released ``--swap_param``): the adversarial weight grows to 1 + λ(1 − P/E).
    anneal_period: P, epochs between strength steps (released ``--reload_frequency``).
    """

    form: str = "dynacl"
    key_momentum: float = 0.99
    anneal_lambda: float = ANNEAL_LAMBDA
    anneal_period: int = ANNEAL_PERIOD


class KeyEncoderModel(MomentumModel):
    """A ContrastiveModel (the query, trained) plus ``key``, its EMA copy (released ``resnet18_momentum``).

    ``bench.methodkit.momentum.MomentumModel`` with the target under its released name ``key`` (so
    checkpoints keep their ``key.*`` entries): the key starts as a copy of the query, never receives
    gradients and keeps its own BN statistics; ``update_key`` averages parameters only.
    """

    target_name = "key"

    def query_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self.online_parameters()

    def update_key(self) -> None:
        """key ← m·key + (1 − m)·query, parameter by parameter (buffers untouched)."""
        self.update_target(self.momentum)

    def key_encoder(self) -> ContrastiveModel:
        """A trainable copy of the key: what is post-processed, saved and finetuned."""
        return self.finetuning_copy("target")


@register("dynacl")
class DynACL(MomentumMethod):
    description = (
        "DynACL (Luo et al. 2023): annealed augmentation, reweighted clean/adversarial NT-Xent, "
        "EMA key encoder (evaluated)"
    )
    model = ACL_MODEL
    variant = VariantSpec(
        adversarial_views=True,
        note="suite extension: [x1, x2, a1, a2] contrasted jointly, without the w_e reweighting",
    )
    Params = DynACLParams
    selected_by_all = False  # outside the A-InfoNCE table: --methods 'dynacl*' (bench.methodkit.method)
    published_settings = PublishedSettings(PAPER, SMOKE)
    # The released order (train_DynACL.py): the key moves after the forwards and before the optimiser
    # step, inside ``training_step``, by the constant ``key_momentum``; the key is what is finetuned.
    update_timing = "in_step"
    finetune_network = "target"
    # DynACL++: the post stage as PKU-ML/DYNACL releases it (rows 'dynacl++' above); quirks='official' starts
    # its TRADES attack at x, as DYNACL's utils.trades_loss does.
    post_forms = {
        "pp": PostForm(
            "DynACL++ (Luo et al. 2023): DynACL, then LP-AFT on K-means pseudo-labels "
            "(linear probe, TRADES full finetuning)",
            official={"attack_start": "clean"},
        )
    }

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        super().check_params(params)
        if params.form not in FORMS:
            raise ConfigError(f"form={params.form!r} is invalid: allowed {list(FORMS)}")
        if not 0.0 <= params.key_momentum <= 1.0:
            raise ConfigError(f"key_momentum={params.key_momentum!r} is invalid: allowed numbers in [0, 1]")
        if not 0.0 <= params.anneal_lambda < float("inf"):
            raise ConfigError(f"anneal_lambda={params.anneal_lambda!r} is invalid: allowed finite numbers >= 0")
        period = params.anneal_period
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ConfigError(f"anneal_period={params.anneal_period!r} is invalid: allowed integers >= 1")

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        model = super().build_model(arch, in_channels)
        return KeyEncoderModel(model, self.params.key_momentum) if self.params.form == "dynacl" else model

    def base_momentum(self) -> float:
        """m of the key encoder (``key_momentum``), constant over the run as released."""
        return float(self.params.key_momentum)

    # ------------------------------------------------------------------ schedule
    def schedule(self, ctx: StepContext) -> tuple[float, float]:
        """(strength s_e, adversarial weight w) of this step's epoch; needs the run's total epochs."""
        if ctx.epochs < 1:
            raise ValueError(
                f"{self.name}: StepContext.epochs={ctx.epochs!r} is invalid: allowed the run's total "
                "pretraining epochs (>= 1), which its augmentation schedule needs"
            )
        period, anneal_lambda = self.params.anneal_period, self.params.anneal_lambda
        strength = augmentation_strength(ctx.epoch, ctx.epochs, period)
        if self.params.form == "dynacl":
            return strength, dynacl_adversarial_weight(ctx.epoch, ctx.epochs, period, anneal_lambda)
        return strength, 1.0 + reweighting_omega(strength, anneal_lambda)

    # ------------------------------------------------------------------ step
    def embed_pair(self, model: ContrastiveModel, pair: torch.Tensor, bn: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections of a stacked pair [x1; x2]: x1 through the query and x2 through the key
        (form 'dynacl', each its own BN batch), or both through the model in one forward."""
        if isinstance(model, KeyEncoderModel):
            x1, x2 = pair.chunk(2)
            return model(x1, bn), model.key(x2, bn)
        z1, z2 = model(pair, bn).chunk(2)
        return z1, z2

    def adversarial_pair(self, model: ContrastiveModel, pair: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """PGD on both views jointly, model (query and key) in eval mode, mode restored afterwards."""
        return pretraining_pgd(
            model, lambda inputs: nt_xent(*self.embed_pair(model, inputs, "pgd"), self.params.temperature), pair, ctx
        )

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        strength, weight = self.schedule(ctx)
        augment = annealed_augment(strength)
        clean = torch.cat([augment(images, ctx.generator), augment(images, ctx.generator)])
        adversarial = self.adversarial_pair(model, clean, ctx)
        alpha = self.update_alpha(model, clean, adversarial, ctx)
        z_adv = self.embed_pair(model, adversarial, "pgd")
        z_clean = self.embed_pair(model, clean, "normal")
        self.update_target(model, ctx)  # the key, before the optimiser step (released order)
        logs: dict[str, Any] = {"strength": strength, "adv_weight": weight}
        if not (self.variant.inferior_positives or self.variant.hard_negatives):
            loss_clean = nt_xent(*z_clean, self.params.temperature)
            loss_adv = nt_xent(*z_adv, self.params.temperature)
            logs.update(loss_clean=loss_clean.detach(), loss_adv=loss_adv.detach())
            return 0.5 * ((2.0 - weight) * loss_clean + weight * loss_adv), logs
        features = torch.stack([*z_clean, *z_adv], dim=1)  # [B, 4, D]: x1, x2, a1, a2
        logs["alpha"] = alpha
        return self.contrastive_loss(features, (False, False, True, True)), logs
