"""Finetuning schemes SLF, ALF and AFF (Fan et al. 2021; DESIGN §5).

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
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from bench import progress
from bench.attacks import pgd_cross_entropy, trades_kl_attack
from bench.config import FinetuneConfig
from bench.data import batch_indices, to_float
from bench.models import Classifier, ContrastiveModel
from bench.views import WeakAugment


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


def _scheme_loss(
    classifier: Classifier, scheme: str, x: torch.Tensor, y: torch.Tensor, config: FinetuneConfig,
    epsilon: float, step_size: float, generator: torch.Generator,
) -> torch.Tensor:
    if scheme == "SLF":
        return F.cross_entropy(classifier(x), y)
    classifier.eval()
    if scheme == "ALF":
        x_adv = pgd_cross_entropy(classifier, x, y, epsilon=epsilon, step_size=step_size, steps=config.alf_steps,
                                  generator=generator)
        _set_mode(classifier, scheme)
        return F.cross_entropy(classifier(x_adv), y)
    x_adv = trades_kl_attack(classifier, x, epsilon=epsilon, step_size=step_size, steps=config.trades_steps,
                             generator=generator)
    _set_mode(classifier, scheme)
    logits_clean, logits_adv = classifier(x), classifier(x_adv)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + config.trades_beta * robust


def finetune(
    scheme: str,
    model: ContrastiveModel,
    bn: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    config: FinetuneConfig,
    *,
    epsilon: float,
    step_size: float,
    seed: int,
    device: torch.device,
    epoch_eval: Callable[[Classifier], dict[str, float]] | None = None,
) -> FinetuneResult:
    """Train a classifier on uint8 ``x_train`` with one scheme; labels only here."""
    if scheme not in ("SLF", "ALF", "AFF"):
        raise ValueError(f"scheme={scheme!r} is invalid: allowed ['ALF', 'AFF', 'SLF']")
    classifier = build_classifier(model, num_classes, bn, scheme).to(device)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    lr = config.full_lr if scheme == "AFF" else config.lr
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=0.1)
    generator = torch.Generator(device=device).manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)
    augment = WeakAugment()
    result = FinetuneResult(classifier)
    batches = -(-x_train.shape[0] // config.batch_size)
    with progress.task(f"  {scheme}", config.epochs * batches) as bar:
        for _ in range(config.epochs):
            for indices in batch_indices(x_train.shape[0], config.batch_size, order_generator, drop_last=False):
                indices = indices.to(x_train.device)
                x = to_float(x_train[indices]).to(device)
                y = y_train[indices].to(device)
                if config.augment:
                    x = augment(x, generator)
                _set_mode(classifier, scheme)
                loss = _scheme_loss(classifier, scheme, x, y, config, epsilon, step_size, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.advance(1, info=f"loss {loss.item():.3f}")
            scheduler.step()
            if epoch_eval is not None:
                result.epoch_metrics.append(epoch_eval(classifier))
    classifier.eval()
    return result
