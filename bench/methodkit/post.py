"""The "++" post-processing stage of DynACL (Luo, Wang, Wang, ICLR 2023): LP-AFT on pseudo-labels.

After pretraining, and before the encoder is saved and finetuned, DynACL++ adapts the
encoder to a classification task without any label:
1. pseudo-labels: K-means (K clusters, Euclidean) on the pooled encoder features of the
   un-augmented pretraining set through the ``'normal'`` BN branch, encoder in eval mode
   (PKU-ML/DYNACL ``assign_label.py``; K = 10 hard-coded there, K = number of classes in
   GodXuxilie/Enhancing_ACL_via_AIR ``LP-AFF.py``);
2. linear probing (LP): a zero-initialised linear head on the frozen encoder (eval mode,
   adversarial BN branch), SGD lr 0.01, momentum 0.9, wd 1e-4, constant lr, 10 epochs;
3. adversarial full finetuning (AFT): TRADES (β 6, 10 steps of 2/255, ε 8/255; attack in eval
   mode, loss in train mode) on the whole network from that head, SGD lr 0.1, momentum 0.9,
   wd 1e-4, ÷10 at epochs 10 and 20, 25 epochs (``LPAFT.py``, ``LPAFT_AFF.py``).
Batches of 512 with random crop (padding 1/8 of the size) and flip, last partial batch dropped.
The head is thrown away; the returned encoder goes on to the usual finetuning protocol.

This module holds what the stage is (its settings, the parameters a run sets, their checks), low
enough for methods and the plan to name; ``bench.evaluation.post.post_process`` runs it on the
finetuning and clustering code, and works on any ``ContrastiveModel``, so any method can ask for it.
Only the BN branch ``bn`` (and the shared convolutions) is trained: DYNACL's dual-BN script
routes both TRADES terms through ``'pgd'``, and its single-BN script trains the ``'pgd'``
route alone; both are this computation.

Released differences kept behind settings (``PostSettings``), both off by default:
- ``attack_start='clean'``: DYNACL's ``utils.trades_loss``/``trades_loss_dual`` start the KL
  attack at x itself (TRADES and AIR's ``LP-AFF.py`` start at x + 0.001·N(0, 1)); at x the KL
  gradient is rounding noise that ``sign()`` turns into a full step;
- ``reference_bn='normal'``: AIR's ``finetuning_utils.trades_loss_dual`` computes the attack's
  clean reference distribution through the ``'normal'`` branch while its loss uses ``'pgd'``.
Deviations: K-means is scikit-learn's (k-means++ init, ``kmeans_restarts`` runs) where the
released code uses ``kmeans_pytorch`` (random init, one run); the head has K outputs (the
released head has as many as the dataset's classes, 100 on CIFAR-100 with K = 10 labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.choices import POST_STAGES  # noqa: F401  (re-exported; the names live in bench.choices)
from bench.coercion import coerce, field_types
from bench.engine.attacks import TRADES_STARTS
from bench.errors import ConfigError
from bench.methodkit.method import Method, MethodParams, Published
from bench.methodkit.registry import Spelling

if TYPE_CHECKING:
    from bench.config import RunConfig


@dataclass
class PostSettings:
    """Settings of the LP-AFT stage; defaults are PKU-ML/DYNACL ``LPAFT.py`` and ``assign_label.py``."""

    clusters: int = 10  # K of the K-means pseudo-labels
    feature_bn: str = "normal"  # branch whose features are clustered (assign_label.py)
    bn: str = "pgd"  # branch trained by LP and AFT (bnNameCnt 1)
    head_epochs: int = 10
    head_lr: float = 0.01
    epochs: int = 25
    lr: float = 0.1
    milestones: tuple[int, ...] = (10, 20)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 512
    beta: float = 6.0  # TRADES β
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    attack_steps: int = 10
    attack_start: str = "noise"  # 'noise' (x + 0.001·N(0, 1)) or 'clean' (x: DYNACL's released TRADES)
    reference_bn: str = ""  # branch of the attack's clean reference ('' = bn; AIR++ released: 'normal')
    augment: bool = True  # random crop + flip (the harness turns it off for digits)
    kmeans_restarts: int = 3


def check_settings(settings: PostSettings, branches: tuple[str, ...]) -> None:
    """One clear line for any impossible setting, before any work."""
    counts = {"clusters": 2, "head_epochs": 0, "epochs": 0, "batch_size": 2, "attack_steps": 0, "kmeans_restarts": 1}
    for name, low in counts.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"post {name}={value!r} is invalid: allowed integers >= {low}")
    for name in ("head_lr", "lr", "momentum", "weight_decay", "beta", "epsilon", "step_size"):
        value = getattr(settings, name)
        if not 0 <= value < float("inf"):
            raise ValueError(f"post {name}={value!r} is invalid: allowed finite numbers >= 0")
    if settings.attack_start not in TRADES_STARTS:
        raise ValueError(f"post attack_start={settings.attack_start!r} is invalid: allowed {list(TRADES_STARTS)}")
    for name in ("feature_bn", "bn", "reference_bn"):
        value = getattr(settings, name)
        if value not in branches and not (name == "reference_bn" and value == ""):
            raise ValueError(f"post {name}={value!r} is invalid: allowed the model's BN branches {list(branches)}")


@dataclass
class PostParams:
    """The stage's settings a method exposes as parameters (mixed into its ``Params``, so they are
    part of the run's identity and of its encoder's pretraining key). Defaults: ``LPAFT.py``."""

    post_clusters: int = 10  # K (assign_label.py hard-codes 10; AIR's LP-AFF.py uses the class count)
    post_head_epochs: int = 10  # --epochs_head
    post_epochs: int = 25  # --epochs
    post_milestones: tuple[int, ...] = (10, 20)
    post_batch_size: int = 512  # --batch_size
    post_attack_steps: int = 10  # perturb_steps


# The smoke preset's stage (8 pretraining epochs on the digits): LP 1 epoch, AFT 2, batch 64, TRADES PGD-2.
SMOKE_POST_PARAMS = {
    "post_clusters": 10,
    "post_head_epochs": 1,
    "post_epochs": 2,
    "post_milestones": (),
    "post_batch_size": 64,
    "post_attack_steps": 2,
}
POST_FIELDS = frozenset(field.name for field in dataclasses.fields(PostParams))


def check_post_params(params: PostParams) -> None:
    """``ConfigError`` on an impossible post-stage parameter (one line, the allowed values)."""
    for name, low in (
        ("post_clusters", 2),
        ("post_head_epochs", 0),
        ("post_epochs", 0),
        ("post_batch_size", 2),
        ("post_attack_steps", 0),
    ):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is invalid: allowed integers >= {low}")
    milestones = params.post_milestones
    if not isinstance(milestones, tuple) or not all(isinstance(m, int) and m >= 0 for m in milestones):
        raise ConfigError(f"post_milestones={milestones!r} is invalid: allowed a tuple of integers >= 0")


@dataclass(frozen=True)
class PostForm:
    """A post stage a method's paper publishes under its own name (DynACL++, DynACL-AIR++): the method
    lists it in ``Method.post_forms`` (post label -> ``PostForm``), so ``<name>++`` and its A-InfoNCE
    variants' ``<name>++-ip``... are listed by ``bench list`` and picked by patterns, and their settings
    are the rows the method's ``paper``/``smoke`` tables hold under that name (the stage's included).

    description: the line ``bench list`` prints for ``<name>++``.
    official: ``PostSettings`` fields under ``quirks='official'`` (the released script's differences);
        a published form with some accepts ``quirks='official'`` even where the method alone does not.
    """

    description: str
    official: Mapping[str, Any] = field(default_factory=dict)


def post_published(method: type[Method], label: str, form: str, preset: str, dataset: str) -> Published:
    """The published settings of ``label`` (``method`` with the post stage). ``form``: the published post
    form it spells (``dynacl++`` for ``dynacl++`` and ``dynacl++-ip``): its rows, under ``label`` or
    ``form``, from the method's tables. '' (any other method's ``<name>++``): the method's own row, and in
    the smoke preset the smoke stage ``SMOKE_POST_PARAMS``; the stage's other settings are its defaults."""
    if form:
        return method.published_settings.row(list(dict.fromkeys((label, form))), preset, dataset, label)
    row = method.published(preset, dataset)
    stage = SMOKE_POST_PARAMS if preset == "smoke" else {}
    note = "post stage: LP 1 + AFT 2 epochs, batch 64, PGD-2" if stage else "post stage: PKU-ML/DYNACL LPAFT.py"
    source = "; ".join(filter(None, (row.source, note)))
    return Published(source=source, pretrain=row.pretrain, params={**row.params, **stage})


def make_post_params(values: Mapping[str, Any], label: str) -> PostParams:
    """``PostParams`` from raw values (strings are coerced, as ``Method.make_params`` does), checked."""
    types = field_types(PostParams)
    params = PostParams(**{key: coerce(types[key], raw, f"{label}.{key}") for key, raw in values.items()})
    check_post_params(params)
    return params


def settings_for(params: PostParams, config: RunConfig, **released: Any) -> PostSettings:
    """The stage's settings for a run: the method's ``post_*`` parameters, the run's pretraining
    attack budget (ε, step: 8/255 and 2/255 in the paper preset, as released) and its finetuning
    augmentation switch; ``released`` sets the per-script fields (attack_start, reference_bn)."""
    return PostSettings(
        clusters=params.post_clusters,
        head_epochs=params.post_head_epochs,
        epochs=params.post_epochs,
        milestones=tuple(params.post_milestones),
        batch_size=params.post_batch_size,
        attack_steps=params.post_attack_steps,
        epsilon=config.attack.epsilon,
        step_size=config.attack.step_size,
        augment=config.finetune.augment,
        **released,
    )


# --------------------------------------------------------------------------- a run's stage (bench.runs.plan)


def published(method: type[Method], spelled: Spelling, preset: str, dataset: str):
    """The published settings of the run ``spelled`` asks for: the method's, or with the post stage
    ``post_published`` (a published form's rows, or the method's plus the smoke stage)."""
    if spelled.post:
        return post_published(method, spelled.name, spelled.form, preset, dataset)
    return method.published(preset, dataset)


def run_params(
    method: type[Method], spelled: Spelling, values: dict[str, Any]
) -> tuple[MethodParams, PostParams | None]:
    """The method's ``Params`` and, for a run with the post stage, its ``PostParams``, from raw values.

    A published post form with released differences (``PostForm.official``) accepts ``quirks='official'``
    for its stage even where the method alone does not (DynACL's pretraining has no released quirk)."""
    if not spelled.post:
        return method.make_params(values), None
    known = set(field_types(method.Params))
    unknown = sorted(key for key in values if key not in known and key not in POST_FIELDS)
    if unknown:
        raise ConfigError(
            f"method parameter {unknown[0]!r} of {spelled.name!r} is unknown: allowed {sorted(known | POST_FIELDS)}"
        )
    own = {key: value for key, value in values.items() if key not in POST_FIELDS}
    post = make_post_params({key: value for key, value in values.items() if key in POST_FIELDS}, spelled.name)
    form = method.post_forms.get(spelled.post) if spelled.form else None
    if form is not None and form.official and not method.variant.official_quirks and own.get("quirks") == "official":
        return dataclasses.replace(method.make_params({**own, "quirks": "none"}), quirks="official"), post
    return method.make_params(own), post


def stage_settings(
    method: type[Method], spelled: Spelling, config: RunConfig, params: MethodParams, post: PostParams | None
) -> PostSettings | None:
    """The post stage's settings: its parameters, the run's attack budget and augmentation switch, the branch the
    schemes finetune, and under ``quirks='official'`` a published form's released differences."""
    if post is None:
        return None
    form = method.post_forms.get(spelled.post) if spelled.form else None
    official = dict(form.official) if form is not None and params.quirks == "official" else {}
    return settings_for(post, config, bn=method.model.finetune_bn, **official)
