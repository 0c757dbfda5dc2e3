"""The post stage's driver: DynACL++'s LP-AFT on K-means pseudo-labels, on the finetuning and clustering code.

What the stage computes, its released sources and settings are in ``bench.methodkit.post`` (``PostSettings``):
K-means pseudo-labels of the pooled features of the un-augmented pretraining set (encoder in eval mode,
branch ``feature_bn``), then a linear probe of a zero-initialised head on the frozen encoder, then TRADES
on the whole network, returning the encoder (the head is thrown away).

It lives here, a level above the settings, because it is finetuning: the probe is an SLF scheme and the
full finetuning an AFF scheme of ``bench.evaluation.finetune`` (``train_classifier``: the same SGD, step
decay, crop+flip, TRADES loss and attack as the finetuning protocols), run on pseudo-labels with two
differences of the released scripts kept as arguments: the last partial batch is dropped, and the batch
order and the views continue from LP into AFT (one order generator and one view generator for both).
The features and K-means are AdvCL's computed pseudo-labels' (``bench.methodkit.pseudo_labels``:
``model_features`` and ``kmeans_labels``; never mini-batch K-means here, as released).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from bench.engine.models import ContrastiveModel
from bench.evaluation.finetune import SchemeSettings, build_classifier, train_classifier
from bench.methodkit.post import PostSettings, check_settings
from bench.methodkit.pseudo_labels import kmeans_labels, model_features


def pseudo_labels(model: ContrastiveModel, images: torch.Tensor, settings: PostSettings, seed: int) -> np.ndarray:
    """K-means labels (K = ``settings.clusters``) of the float64 pooled features through ``feature_bn``;
    more clusters than images is an error."""
    if settings.clusters > images.shape[0]:
        raise ValueError(
            f"post clusters={settings.clusters} is invalid: allowed at most the {images.shape[0]} training images"
        )
    features = model_features(model, images, settings.feature_bn, settings.batch_size).numpy().astype(np.float64)
    return kmeans_labels(features, settings.clusters, seed, settings.kmeans_restarts)


def probe_settings(settings: PostSettings, images: int) -> SchemeSettings:
    """LP as an SLF scheme: constant lr ``head_lr`` for ``head_epochs``, batches of at most the set."""
    return _scheme(settings, images, "SLF", epochs=settings.head_epochs, lr=settings.head_lr, milestones=())


def finetune_settings(settings: PostSettings, images: int) -> SchemeSettings:
    """AFT as an AFF scheme: TRADES (β, ε, step, steps, start) with step decay at ``milestones``."""
    return _scheme(settings, images, "AFF", epochs=settings.epochs, lr=settings.lr, milestones=settings.milestones)


def _scheme(settings: PostSettings, images: int, scheme: str, **values) -> SchemeSettings:
    return SchemeSettings(
        scheme=scheme,
        batch_size=min(settings.batch_size, images),
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        augment=settings.augment,
        train_attack_steps=settings.attack_steps if scheme == "AFF" else 0,
        trades_beta=settings.beta,
        epsilon=settings.epsilon,
        step_size=settings.step_size,
        trades_start=settings.attack_start,
        head_init="zeros",
        source="bench.methodkit.post (PKU-ML/DYNACL LPAFT.py)",
        **{**values, "milestones": tuple(values["milestones"])},
    )


def post_process(
    model: ContrastiveModel,
    train_images: torch.Tensor,
    settings: PostSettings,
    device: torch.device,
    generator: torch.Generator,
) -> ContrastiveModel:
    """DynACL++'s LP-AFT on K-means pseudo-labels; returns a new encoder (``model`` is not changed).

    ``train_images``: the uint8 pretraining set (labels are never seen). ``generator`` (on
    ``device``) seeds the views and attack noise; the K-means seed and the batch order derive
    from one draw of it, so a run is reproducible from the generator's state.
    """
    check_settings(settings, tuple(model.bn_names()) or ("normal",))
    encoder = copy.deepcopy(model).to(device)  # the caller's model stays where and as it is
    images = train_images.to(device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
    labels = torch.as_tensor(pseudo_labels(encoder, images, settings, seed), device=device)
    classifier = build_classifier(encoder, settings.clusters, settings.bn, "SLF", head_init="zeros").to(device)
    order = torch.Generator().manual_seed(seed)
    loop = dict(generator=generator, order=order, device=device, drop_last=True)
    train_classifier(classifier, probe_settings(settings, images.shape[0]), images, labels, name="post LP", **loop)
    for parameter in classifier.backbone.parameters():  # the probe froze the encoder; AFT trains it all
        parameter.requires_grad_(True)
    reference = settings.reference_bn if settings.reference_bn not in ("", settings.bn) else ""
    aft = finetune_settings(settings, images.shape[0])
    train_classifier(classifier, aft, images, labels, name="post AFT", reference_bn=reference, **loop)
    encoder = classifier.backbone
    encoder.eval()
    return encoder
