"""Finetuning schemes SLF, ALF and AFF (Fan et al. 2021; docs/design.md §5).

- SLF (standard linear finetuning): encoder frozen in eval mode, linear head on clean inputs.
- ALF (adversarial linear finetuning): encoder frozen in eval mode, head trained on PGD
  examples (PGD-20 as in the released scripts) made against the current classifier.
- AFF (adversarial full finetuning): the whole network with TRADES (Zhang et al. 2019),
  β = 6, a 10-step KL attack in eval mode, the loss in train mode.
Every scheme uses SGD (momentum, weight decay), step decay at the milestones, crop+flip.
The encoder's BN branch is the method's ``finetune_bn`` (e.g. 'pgd' for ACL and AdvCL).
The numbers (epochs, lr, batch, attack steps, …) come from the run's protocol
(``scheme_settings``; ``bench.evaluation.protocols``): ``unified`` is the list above for every method;
``robustssl`` adds a zero-initialised head and, for the ACL family, dual-BN TRADES.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import SCHEMES, ConfigError, RunConfig
from bench.engine import progress
from bench.engine.attacks import pgd_cross_entropy, trades_kl_attack
from bench.engine.data import ImageData, batch_indices, to_float
from bench.engine.models import Classifier, ContrastiveModel
from bench.engine.views import WeakAugment
from bench.evaluation import protocol_resolution, protocols


@dataclass(frozen=True)
class SchemeSettings:
    """Everything one finetuning scheme uses, resolved from the config and its protocol (what a plan prints).

    ``train_attack_steps`` is the PGD steps of ALF's training attack or TRADES' KL attack (0 for SLF);
    ``epsilon``/``step_size`` are the threat model the adversarial schemes train against (the
    evaluation's, as in the released scripts); ``eval_step_size`` is the evaluation PGD's step (the
    A-InfoNCE RoCL scripts attack with a tenth of ε). ``dual_bn``: AFF routes clean inputs through BN
    'normal' and adversarial ones through the classifier's branch (RobustSSL ``trades_loss_dual``);
    ``head_init``: 'default' (nn.Linear) or 'zeros' (RobustSSL ``get_model``); ``trades_start``: where AFF's
    KL attack starts ('noise': x + 0.001·N(0, 1); 'clean': x, DYNACL's ``trades_loss_dual``); ``best_epoch``: evaluate
    every epoch for the best-on-test-epoch extra rows; ``reported_epoch``: which of 'last' or 'best' the
    protocol's source reports; ``source``: where the values come from (``bench.evaluation.protocols``).
    """

    scheme: str
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    momentum: float
    weight_decay: float
    augment: bool
    train_attack_steps: int
    trades_beta: float
    epsilon: float
    step_size: float
    eval_step_size: float | None = None  # None: the run's evaluate.step_size
    dual_bn: bool = False
    head_init: str = "default"
    trades_start: str = "noise"
    best_epoch: bool = True
    reported_epoch: str = "last"
    protocol: str = "unified"
    family: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--dry-run --json``'s ``finetune`` object)."""
        values = dataclasses.asdict(self)
        values["milestones"] = list(self.milestones)
        return values


def scheme_settings(config: RunConfig, scheme: str, method: str | None = None) -> SchemeSettings:
    """The settings of ``scheme`` under the config's protocol (``finetune.protocol``) for ``method``.

    ``unified`` (the default) reads the run's ``FinetuneConfig``: one set of settings for every method
    (docs/design.md §5). ``robustssl`` and ``ainfonce`` follow their sources method by method
    (``bench.evaluation.protocols``), so they need the method's registry name (or a checkpoint's family)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is invalid: allowed {sorted(SCHEMES)}")
    protocol = config.finetune.protocol
    evaluate = config.evaluate
    if protocol == "unified":
        tune = config.finetune
        attack_steps = {"SLF": 0, "ALF": tune.alf_steps, "AFF": tune.trades_steps}[scheme]
        return SchemeSettings(
            scheme=scheme,
            epochs=tune.epochs,
            batch_size=tune.batch_size,
            lr=tune.full_lr if scheme == "AFF" else tune.lr,
            milestones=tuple(tune.milestones),
            momentum=tune.momentum,
            weight_decay=tune.weight_decay,
            augment=tune.augment,
            train_attack_steps=attack_steps,
            trades_beta=tune.trades_beta,
            epsilon=evaluate.epsilon,
            step_size=evaluate.step_size,
            eval_step_size=evaluate.step_size,
            best_epoch=tune.best_epoch,
            source=protocols.UNIFIED_PROTOCOL.base_source,
        )
    if not method:
        raise ValueError(f"protocol {protocol!r} sets finetuning per method: scheme_settings needs the method name")
    data = config.data
    resolved = protocol_resolution.resolve(protocol, method, data.eval_name or data.name, data.image_size, scheme)
    values = dict(resolved.values)
    ratio = values.pop("eval_step_ratio")
    return SchemeSettings(
        scheme=scheme,
        epsilon=evaluate.epsilon,
        step_size=evaluate.step_size,
        eval_step_size=evaluate.step_size if ratio is None else ratio * evaluate.epsilon,
        protocol=protocol,
        family=resolved.family,
        source="; ".join(resolved.sources),
        **{**values, "milestones": tuple(values["milestones"])},
    )


@dataclass
class FinetuneResult:
    classifier: Classifier
    # per-epoch test metrics (for the best-on-test-epoch extra column), e.g. {"clean": .., "pgd20": ..}
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)


def build_classifier(
    model: ContrastiveModel,
    num_classes: int,
    bn: str,
    scheme: str,
    head_init: str = "default",
) -> Classifier:
    """A copy of the encoder plus a linear head; SLF/ALF freeze the encoder.

    ``head_init='zeros'`` zeroes the head after nn.Linear's initialisation (RobustSSL
    ``utils.py get_model``), so the random draws, and everything seeded after them, stay the same."""
    if head_init not in protocols.HEAD_INITS:
        raise ValueError(f"head_init={head_init!r} is invalid: allowed {list(protocols.HEAD_INITS)}")
    classifier = Classifier(copy.deepcopy(model), num_classes, bn)
    if head_init == "zeros":
        with torch.no_grad():
            classifier.head.weight.zero_()
            classifier.head.bias.zero_()
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
    classifier: Classifier,
    settings: SchemeSettings,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    reference_bn: str = "",
) -> torch.Tensor:
    """One batch's training loss of the scheme: CE (SLF), CE on PGD examples (ALF), TRADES (AFF).

    The attacks run with the classifier in eval mode; the loss is computed in the scheme's mode.
    With ``settings.dual_bn`` (RobustSSL ``trades_loss_dual``) the clean logits, in the attack's
    KL target and in the loss, go through BN 'normal' and the adversarial ones through the
    classifier's own branch (the one evaluated afterwards). ``reference_bn`` routes the attack's
    clean KL target alone through that branch (AIR's ``finetuning_utils.trades_loss_dual``, which the
    post stage reproduces under ``quirks='official'``); '' = as the loss."""
    scheme = settings.scheme
    if scheme == "SLF":
        return F.cross_entropy(classifier(x), y)
    classifier.eval()
    if scheme == "ALF":
        x_adv = pgd_cross_entropy(
            classifier,
            x,
            y,
            epsilon=settings.epsilon,
            step_size=settings.step_size,
            steps=settings.train_attack_steps,
            generator=generator,
        )
        _set_mode(classifier, scheme)
        return F.cross_entropy(classifier(x_adv), y)
    clean_route = branch_route(classifier, "normal") if settings.dual_bn else None
    reference = branch_route(classifier, reference_bn) if reference_bn else clean_route
    x_adv = trades_kl_attack(
        classifier,
        x,
        epsilon=settings.epsilon,
        step_size=settings.step_size,
        steps=settings.train_attack_steps,
        generator=generator,
        clean_classifier=reference,
        start=settings.trades_start,
    )
    _set_mode(classifier, scheme)
    logits_clean = classifier(x) if clean_route is None else clean_route(x)
    return trades_loss(logits_clean, classifier(x_adv), y, settings.trades_beta)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(p(x_adv) ‖ p(x)) / B, gradient through both terms."""
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * robust


def branch_route(classifier: Classifier, bn: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The classifier's logits with the encoder routed through another BN branch (same weights, same head)."""
    return lambda x: classifier.head(classifier.backbone.features(x, bn=bn))


def check_dual_bn(settings: SchemeSettings, model: ContrastiveModel, bn: str) -> None:
    """Dual-BN AFF needs a clean branch 'normal' distinct from the classifier's branch; never route silently."""
    if settings.scheme == "AFF" and settings.dual_bn and (bn == "normal" or "normal" not in model.bn_names()):
        raise ConfigError(
            f"AFF under protocol {settings.protocol} is dual-BN: it needs the clean BN branch 'normal' "
            f"beside the finetuned one, and this encoder has {list(model.bn_names())} finetuned through "
            f"{bn!r} (for a released checkpoint pass --branch all)"
        )


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
    check_dual_bn(settings, model, bn)
    classifier = build_classifier(model, data.num_classes, bn, settings.scheme, settings.head_init).to(device)
    result = FinetuneResult(classifier)
    train_classifier(
        classifier,
        settings,
        data.x_train,
        data.y_train,
        generator=torch.Generator(device=device).manual_seed(seed),
        order=torch.Generator().manual_seed(seed),
        device=device,
        epoch_end=None if epoch_eval is None else lambda: result.epoch_metrics.append(epoch_eval(classifier)),
    )
    classifier.eval()
    return result


def train_classifier(
    classifier: Classifier,
    settings: SchemeSettings,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
    order: torch.Generator,
    device: torch.device,
    name: str = "",
    drop_last: bool = False,
    reference_bn: str = "",
    epoch_end: Callable[[], None] | None = None,
) -> list[float]:
    """The scheme's training loop on uint8 ``images`` and ``labels``: SGD over the classifier's trainable
    parameters (momentum, weight decay), step decay at the milestones, shuffled batches drawn from
    ``order`` (the last partial one dropped with ``drop_last``), crop+flip and the attacks drawing from
    ``generator``. The finetuning schemes and the post stage's LP and AFT (``bench.evaluation.post``) both
    run it. ``name`` labels the progress bar and the tracked metrics (default: the scheme);
    ``epoch_end`` runs after each epoch. Returns each epoch's mean loss. A non-finite loss or weight
    stops it with an error: a diverged classifier must never be used."""
    name = name or settings.scheme
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones), gamma=0.1)
    augment = WeakAugment()
    history = []
    batches = images.shape[0] // settings.batch_size if drop_last else -(-images.shape[0] // settings.batch_size)
    step = 0  # the tracker's x axis (progress.metrics): batches so far, over epochs
    with progress.task(f"  {name}", settings.epochs * batches) as bar:
        for epoch in range(settings.epochs):
            losses = []
            for indices in batch_indices(images.shape[0], settings.batch_size, order, drop_last=drop_last):
                indices = indices.to(images.device)
                x = to_float(images[indices]).to(device)
                y = labels[indices].to(device)
                if settings.augment:
                    x = augment(x, generator)
                _set_mode(classifier, settings.scheme)
                loss = scheme_loss(classifier, settings, x, y, generator, reference_bn)
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"{name} finetuning: loss became {value} at epoch {epoch} "
                        f"(lr {optimizer.param_groups[0]['lr']:.4g})"
                    )
                lr = optimizer.param_groups[0]["lr"]
                progress.metrics(step, {f"finetune/{name}/loss": value, f"finetune/{name}/lr": lr})
                step += 1
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(value)
                bar.advance(1, info=f"loss {value:.3f}")
            check_finite(trainable, f"{name} finetuning", epoch)
            scheduler.step()
            history.append(sum(losses) / len(losses) if losses else float("nan"))
            if epoch_end is not None:
                epoch_end()
    return history
