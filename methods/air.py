"""ACL-AIR, DynACL-AIR and DynACL-AIR++ (Xu et al., NeurIPS 2023) and their A-InfoNCE variants.

One step, as in GodXuxilie/Enhancing_ACL_via_AIR ``pretraining.py`` (``--ACL_DS``) and ``AIR.py``:
1. two views (ACL's; with ``--DynAug`` DynACL's annealed strength s_e, ``bench.engine.annealing``);
2. PGD-5 (ε 8/255, step ε/4) on both views jointly maximising the adversarial pair's NT-Xent,
   model in eval mode, BN ``pgd``: the regularisers are not attacked;
3. forwards in train mode: the adversarial pair (BN pgd), the clean pair (BN normal) and the
   un-augmented image (BN normal, a third forward);
4. L = (1 − ω)·NT-Xent(clean pair) + (1 + ω)·NT-Xent(adversarial pair) + λ1·SIR + λ2·AIR with
   λ1 = λ2 = 0.5, ω = λ·(1 − s_e) (λ = 2/3) under ``--DynAug`` (DynACL-AIR), else ω = 0 (ACL-AIR).
   SIR and AIR are ``bench.engine.regularizers.invariant_regularizers``: KL divergences between the
   batch distributions of the two views by default, the released ``kl_div`` arithmetic (a
   probability passed where a log-probability belongs) under ``quirks="official"``.
DynACL-AIR has no momentum key encoder (that is DYNACL's own code, ``methods/dynacl.py``).
DynACL-AIR++ adds the LP-AFT stage of AIR's ``LP-AFF.py`` (``bench.methodkit.post``; a run option that
DynACL-AIR lists in ``post_forms``), with K = the number of classes (rows ``dynacl-air++``) and its TRADES
attack reference through BN ``normal`` under ``quirks="official"``.

Deviations (small, documented in docs/methods-newer.md): views on the device (bilinear crop
where AIR uses bicubic), PGD random start clamped before the first step, last partial batch
dropped, the released seed (1) not imposed.

The released loss has no clean<->adversarial positive pair, so ``-ip``/``-hn``/``-iphn`` are this
suite's extension, as for ACL: the two NT-Xent terms become 2·A-InfoNCE over [x1, x2, a1, a2]
with the adversarial views tagged (×2: the released pair loss sums two NT-Xent terms, and the
factor keeps λ1, λ2's relative weight); ω and the regularisers stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.config import ConfigError
from bench.engine.annealing import (
    ANNEAL_LAMBDA,
    ANNEAL_PERIOD,
    annealed_augment,
    augmentation_strength,
    reweighting_omega,
)
from bench.engine.losses import nt_xent
from bench.engine.models import ContrastiveModel
from bench.engine.optim import ACL_LARS
from bench.engine.regularizers import invariant_regularizers
from bench.methodkit.method import Method, MethodParams, Published, StepContext, pretraining_pgd
from bench.methodkit.post import SMOKE_POST_PARAMS, PostForm
from bench.methodkit.registry import register
from bench.methodkit.spec import ACL_MODEL, PublishedSettings, VariantSpec

AIR_SOURCE = "GodXuxilie/Enhancing_ACL_via_AIR pretraining.py (argparse defaults: --ACL_DS, lambda1 = lambda2 = 0.5)"
# AIR's optimiser is ACL's: LARS lr 5.0, wd 1e-6, per-iteration cosine, 10 warm-up epochs from 0,
# floor 1e-6, batch 512, 1000 epochs.
AIR_PRETRAIN = dict(ACL_LARS)
AIR_PARAMS = {"lambda_sir": 0.5, "lambda_air": 0.5}
DYNAMIC_PARAMS = {**AIR_PARAMS, "anneal_lambda": 2 / 3, "anneal_period": 50}  # --DynAug: LAMBDA = 2/3, K = 50
# LP-AFF.py defaults: K = number of classes, LP 10 epochs, AFT 25 epochs (÷10 at 10, 20), batch 512,
# TRADES 10 steps. The script accepts cifar10 and cifar100 only.
AIR_POST = {
    "post_head_epochs": 10,
    "post_epochs": 25,
    "post_milestones": (10, 20),
    "post_batch_size": 512,
    "post_attack_steps": 10,
}
AIR_PP_SOURCE = "GodXuxilie/Enhancing_ACL_via_AIR run.sh (--ACL_DS --DynAug) and LP-AFF.py (post stage)"

PAPER = {  # registered name -> dataset ('*': any) -> settings; variants use their base's row
    "acl-air": {"*": Published(source=AIR_SOURCE, pretrain=AIR_PRETRAIN, params=AIR_PARAMS)},
    "dynacl-air": {
        "*": Published(
            source="GodXuxilie/Enhancing_ACL_via_AIR run.sh (--ACL_DS --DynAug), pretraining.py",
            pretrain=AIR_PRETRAIN,
            params=DYNAMIC_PARAMS,
        )
    },
    "dynacl-air++": {
        dataset: Published(
            source=AIR_PP_SOURCE, pretrain=AIR_PRETRAIN, params={**DYNAMIC_PARAMS, **AIR_POST, "post_clusters": classes}
        )
        for dataset, classes in (("cifar10", 10), ("cifar100", 100))
    },
}
SMOKE = {  # registered name -> settings of the smoke preset (8 epochs on the digits)
    "dynacl-air": Published(source="smoke: the strength steps every 2 of 8 epochs", params={"anneal_period": 2}),
    "dynacl-air++": Published(
        source="smoke: strength every 2 epochs; post stage K = 10 digit classes, 1 + 2 epochs, batch 64, PGD-2",
        params={"anneal_period": 2, **SMOKE_POST_PARAMS},
    ),
}


@dataclass
class AIRParams(MethodParams):
    """λ1 (``--lambda1``, SIR weight) and λ2 (``--lambda2``, AIR weight) on top of the A-InfoNCE knobs."""

    lambda_sir: float = 0.5
    lambda_air: float = 0.5


@dataclass
class DynamicAIRParams(AIRParams):
    """``--DynAug``: λ of ω = λ(1 − s_e) and P, the epochs between strength steps."""

    anneal_lambda: float = ANNEAL_LAMBDA
    anneal_period: int = ANNEAL_PERIOD


@register("acl-air")
class ACLAIR(Method):
    description = "ACL-AIR (Xu et al. 2023): ACL-DS + λ1·SIR + λ2·AIR invariant regularisers"
    model = ACL_MODEL
    variant = VariantSpec(
        adversarial_views=True,
        official_quirks=True,  # quirks='official': the released kl_div arithmetic (bench.engine.regularizers)
        note="suite extension: 2·A-InfoNCE over [x1, x2, a1, a2] in place of the two NT-Xent terms",
    )
    Params = AIRParams
    selected_by_all = False  # outside the A-InfoNCE table: --methods 'acl-air*' 'dynacl-air*'
    published_settings = PublishedSettings(PAPER, SMOKE)
    annealed: ClassVar[bool] = False  # DynACL's augmentation schedule and ω (--DynAug)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        super().check_params(params)
        for name in ("lambda_sir", "lambda_air", "anneal_lambda"):
            value = getattr(params, name, 0.0)
            if not 0.0 <= value < float("inf"):
                raise ConfigError(f"{name}={value!r} is invalid: allowed finite numbers >= 0")
        period = getattr(params, "anneal_period", 1)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ConfigError(f"anneal_period={period!r} is invalid: allowed integers >= 1")

    # ------------------------------------------------------------------ step
    def schedule(self, ctx: StepContext) -> tuple[float, float]:
        """(strength s_e, ω) of this step: (1, 0) for ACL-AIR; DynACL's for DynACL-AIR (needs the total epochs)."""
        if not self.annealed:
            return 1.0, 0.0
        if ctx.epochs < 1:
            raise ValueError(
                f"{self.name}: StepContext.epochs={ctx.epochs!r} is invalid: allowed the run's total "
                "pretraining epochs (>= 1), which its augmentation schedule needs"
            )
        strength = augmentation_strength(ctx.epoch, ctx.epochs, self.params.anneal_period)
        return strength, reweighting_omega(strength, self.params.anneal_lambda)

    def adversarial_pair(self, model: ContrastiveModel, pair: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """PGD on both views jointly (one forward), model in eval mode, mode restored afterwards."""
        return pretraining_pgd(
            model, lambda inputs: nt_xent(*model(inputs, "pgd").chunk(2), self.params.temperature), pair, ctx
        )

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        strength, omega = self.schedule(ctx)
        augment = annealed_augment(strength)
        clean = torch.cat([augment(images, ctx.generator), augment(images, ctx.generator)])
        adversarial = self.adversarial_pair(model, clean, ctx)
        alpha = self.update_alpha(model, clean, adversarial, ctx)
        adv_1, adv_2 = model(adversarial, "pgd").chunk(2)
        z_1, z_2 = model(clean, "normal").chunk(2)
        z_orig = model(images, "normal")
        sir, air = invariant_regularizers(z_1, z_2, z_orig, adv_1, adv_2, self.params.temperature, self.params.quirks)
        regularizer = self.params.lambda_sir * sir + self.params.lambda_air * air
        logs: dict[str, Any] = {"sir": sir.detach(), "air": air.detach(), "strength": strength, "omega": omega}
        if not (self.variant.inferior_positives or self.variant.hard_negatives):
            temperature = self.params.temperature
            loss_clean, loss_adv = nt_xent(z_1, z_2, temperature), nt_xent(adv_1, adv_2, temperature)
            logs.update(loss_clean=loss_clean.detach(), loss_adv=loss_adv.detach())
            return (1.0 - omega) * loss_clean + (1.0 + omega) * loss_adv + regularizer, logs
        features = torch.stack([z_1, z_2, adv_1, adv_2], dim=1)  # [B, 4, D]: x1, x2, a1, a2
        logs["alpha"] = alpha
        return 2.0 * self.contrastive_loss(features, (False, False, True, True)) + regularizer, logs


@register("dynacl-air")
class DynACLAIR(ACLAIR):
    description = "DynACL-AIR (Xu et al. 2023): AIR with DynACL's annealed augmentation and ω reweighting (--DynAug)"
    Params = DynamicAIRParams
    annealed = True
    # DynACL-AIR++: AIR's LP-AFF.py stage (rows 'dynacl-air++' above: K = the number of classes);
    # quirks='official' takes the TRADES attack's reference through BN 'normal', as its trades_loss_dual.
    post_forms = {
        "pp": PostForm(
            "DynACL-AIR++ (Xu et al. 2023): DynACL-AIR, then LP-AFT on K-means pseudo-labels (K = classes)",
            official={"reference_bn": "normal"},
        )
    }
