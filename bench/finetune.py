"""Finetuning schemes SLF, ALF and AFF (Fan et al. 2021; docs/design.md §5).

- SLF (standard linear finetuning): encoder frozen in eval mode, linear head on clean inputs.
- ALF (adversarial linear finetuning): encoder frozen in eval mode, head trained on PGD
  examples (PGD-20 as in the released scripts) made against the current classifier.
- AFF (adversarial full finetuning): the whole network with TRADES (Zhang et al. 2019),
  β = 6, a 10-step KL attack in eval mode, the loss in train mode.
Every scheme uses SGD (momentum, weight decay), step decay at the milestones, crop+flip.
The encoder's BN branch is the method's ``finetune_bn`` (e.g. 'pgd' for ACL and AdvCL).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from bench import progress
from bench.attacks import pgd_cross_entropy, trades_kl_attack
from bench.config import SCHEMES, RunConfig
from bench.data import ImageData, batch_indices, to_float
from bench.models import Classifier, ContrastiveModel
from bench.views import WeakAugment


@dataclass(frozen=True)
class SchemeSettings:
    """Everything one finetuning scheme uses, resolved from the config (what a plan prints).

    ``attack_steps`` is the PGD steps of ALF's training attack or TRADES' KL attack (0 for SLF);
    ``epsilon``/``step_size`` are the threat model the adversarial schemes train against (the
    evaluation's, as in the released scripts).
    """

    scheme: str
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    momentum: float
    weight_decay: float
    augment: bool
    attack_steps: int
    trades_beta: float
    epsilon: float
    step_size: float


def scheme_settings(config: RunConfig, scheme: str) -> SchemeSettings:
    """The ``unified`` protocol: one set of finetuning settings for every method (docs/design.md §5)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is invalid: allowed {sorted(SCHEMES)}")
    tune = config.finetune
    attack_steps = {"SLF": 0, "ALF": tune.alf_steps, "AFF": tune.trades_steps}[scheme]
    return SchemeSettings(
        scheme=scheme, epochs=tune.epochs, batch_size=tune.batch_size,
        lr=tune.full_lr if scheme == "AFF" else tune.lr, milestones=tuple(tune.milestones), momentum=tune.momentum,
        weight_decay=tune.weight_decay, augment=tune.augment, attack_steps=attack_steps,
        trades_beta=tune.trades_beta, epsilon=config.evaluate.epsilon, step_size=config.evaluate.step_size,
    )


@dataclass
class FinetuneResult:
    classifier: Classifier
    # per-epoch test metrics (for the best-on-test-epoch extra column), e.g. {"clean": .., "pgd20": ..}
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)


def build_classifier(model: ContrastiveModel, num_classes: int, bn: str, scheme: str) -> Classifier:
    """A copy of the encoder plus a linear head; SLF/ALF freeze the encoder."""
    classifier = Classifier(copy.deepcopy(model), num_classes, bn)
    if scheme in ("SLF", "ALF"):
        for parameter in classifier.backbone.parameters():
            parameter.requires_grad_(False)
    return classifier


def _set_mode(classifier: Classifier, scheme: str) -> None:
    """Train mode for AFF; for SLF/ALF only the head trains and the encoder stays in eval."""
    classifier.train(scheme == "AFF")
    if scheme != "AFF":
        classifier.backbone.eval()


def scheme_loss(
    classifier: Classifier, settings: SchemeSettings, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
) -> torch.Tensor:
    """One batch's training loss of the scheme: CE (SLF), CE on PGD examples (ALF), TRADES (AFF).

    The attacks run with the classifier in eval mode; the loss is computed in the scheme's mode."""
    scheme = settings.scheme
    if scheme == "SLF":
        return F.cross_entropy(classifier(x), y)
    classifier.eval()
    if scheme == "ALF":
        x_adv = pgd_cross_entropy(classifier, x, y, epsilon=settings.epsilon, step_size=settings.step_size,
                                  steps=settings.attack_steps, generator=generator)
        _set_mode(classifier, scheme)
        return F.cross_entropy(classifier(x_adv), y)
    x_adv = trades_kl_attack(classifier, x, epsilon=settings.epsilon, step_size=settings.step_size,
                             steps=settings.attack_steps, generator=generator)
    _set_mode(classifier, scheme)
    logits_clean, logits_adv = classifier(x), classifier(x_adv)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + settings.trades_beta * robust


def check_finite(parameters: list[torch.Tensor], what: str, epoch: int) -> None:
    """A diverged classifier (non-finite weights) must never be evaluated and stored as a result."""
    if not all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
        raise FloatingPointError(f"{what}: weights became non-finite in epoch {epoch}")


def finetune(
    settings: SchemeSettings,
    model: ContrastiveModel,
    bn: str,
    data: ImageData,
    *,
    seed: int,
    device: torch.device,
    epoch_eval: Callable[[Classifier], dict[str, float]] | None = None,
) -> FinetuneResult:
    """Train a classifier on ``data``'s uint8 training split with one scheme; labels only here."""
    scheme = settings.scheme
    classifier = build_classifier(model, data.num_classes, bn, scheme).to(device)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones), gamma=0.1)
    generator = torch.Generator(device=device).manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)
    augment = WeakAugment()
    result = FinetuneResult(classifier)
    x_train, y_train = data.x_train, data.y_train
    batches = -(-x_train.shape[0] // settings.batch_size)
    with progress.task(f"  {scheme}", settings.epochs * batches) as bar:
        for epoch in range(settings.epochs):
            for indices in batch_indices(x_train.shape[0], settings.batch_size, order_generator, drop_last=False):
                indices = indices.to(x_train.device)
                x = to_float(x_train[indices]).to(device)
                y = y_train[indices].to(device)
                if settings.augment:
                    x = augment(x, generator)
                _set_mode(classifier, scheme)
                loss = scheme_loss(classifier, settings, x, y, generator)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"{scheme} finetuning: loss became {value} at epoch {epoch} "
                                             f"(lr {optimizer.param_groups[0]['lr']:.4g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.advance(1, info=f"loss {value:.3f}")
            check_finite(trainable, f"{scheme} finetuning", epoch)
            scheduler.step()
            if epoch_eval is not None:
                result.epoch_metrics.append(epoch_eval(classifier))
    classifier.eval()
    return result
