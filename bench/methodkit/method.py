"""The method contract: what a pretraining method declares and implements.

A method is a small class registered under a name. It declares its model (BatchNorm branches,
projector, the branch finetuning loads) and its other traits as typed specs
(``bench.methodkit.spec``), and implements ``training_step``:
build its views, make its adversarial views with ``bench.engine.attacks.pgd`` on its own
objective, and return the loss. Everything else (loop, optimiser, schedule, AMP, devices,
checkpoints, evaluation) belongs to the harness.

Its published settings are data: ``paper`` (registered name -> dataset -> ``Published``) and
``smoke`` (registered name -> ``Published``) tables at the top of its file, each row citing the
released script it comes from, declared as ``published_settings = PublishedSettings(paper, smoke)``;
``Method.published`` looks a row up and ``Method.make_params`` turns a row's parameters plus the
user's into the method's ``Params``.

The A-InfoNCE knobs (Yu et al., ECCV 2022) live here, in ``MethodParams``, because every
adversarial method gets the ``-ip``/``-hn``/``-iphn`` variants from the same code: a
method passes its views to ``self.contrastive_loss(features, adversarial)`` and the
variant flags decide whether adversarial views are inferior positives and/or hard
negatives (``bench.methodkit.variants``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from bench.coercion import coerce, field_types
from bench.config import PRESETS, AttackConfig, ConfigError
from bench.engine.attacks import pgd
from bench.engine.losses import AdaptiveAlpha, a_infonce
from bench.engine.models import ContrastiveModel, build_contrastive_model, model_mode
from bench.engine.shards import of as shards_of
from bench.methodkit.spec import LegacySpellings, ModelSpec, Published, PublishedSettings, TeacherSpec, VariantSpec
from bench.store.results import RunDir

QUIRKS = ("none", "official")
IP_PARAMS = ("alpha", "adv_weight", "adaptive_epochs", "d_min")  # read by the -ip/-iphn variants only
HN_PARAMS = ("beta", "tau_plus")  # read by the -hn/-iphn variants only

if TYPE_CHECKING:
    from bench.methodkit.post import PostForm


@dataclass
class MethodParams:
    """Hyperparameters every method has; the A-InfoNCE ones are used by its variants.

    temperature: T of the method's contrastive losses and attack objectives (0.5 in every
        released script of ACL, RoCL and AdvCL).
    alpha: share of the clean<->adversarial pull that reaches the clean view (IP).
    adv_weight: w, weight of adversarial<->clean positive terms.
    adaptive_epochs: K, epochs over which the mean clean/adversarial feature distance is
        measured before α adapts per step (0 = fixed α).
    d_min: feature distance under which α becomes 0.5 (symmetric).
    beta, tau_plus: hard-negative concentration and positive-class prior (HN).
    quirks: 'none' (the A-InfoNCE formulas, ``bench.engine.losses.a_infonce``) or 'official' (the
        released code's arithmetic, for methods whose ``VariantSpec`` has ``official_quirks``: RoCL and AdvCL).
    """

    temperature: float = 0.5
    alpha: float = 0.2
    adv_weight: float = 1.0
    adaptive_epochs: int = 0
    d_min: float = 0.4
    beta: float = 1.0
    tau_plus: float = 0.1
    quirks: str = "none"


@dataclass
class StepContext:
    """What the harness hands a method on every step."""

    epoch: int
    step: int
    steps_per_epoch: int
    device: torch.device
    generator: torch.Generator
    attack: AttackConfig
    indices: torch.Tensor | None = None
    run_dir: RunDir | None = None  # where a method may cache what it computes once (e.g. pseudo-labels)
    # bench.engine.shards.Shards: the step's shards (views, random starts, gathers); None = one shard drawing
    # from ``generator``. Methods reach it through ``bench.engine.shards.of(ctx)``.
    shards: Any = None
    # bench speed's reference-style path: recompute what the released code recomputes (same numbers).
    reference_style: bool = False
    # The run's total pretraining epochs. Schedules over the whole run need it (DynACL's
    # augmentation strength); the harness passes ``config.pretrain.epochs`` (0: not given).
    epochs: int = 0


def pretraining_pgd(
    model: ContrastiveModel,
    objective: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    ctx: StepContext,
    **options: Any,
) -> torch.Tensor:
    """PGD with the run's pretraining attack (``ctx.attack``), the model in eval mode while it runs
    (as every released method attacks) and its mode restored; ``options`` override ``pgd``'s keywords
    (``start`` for per-shard random starts, ``parameter_gradients`` for ``bench speed``)."""
    settings = {
        "epsilon": ctx.attack.epsilon,
        "step_size": ctx.attack.step_size,
        "steps": ctx.attack.steps,
        "generator": ctx.generator,
        **options,
    }
    with model_mode(model, False):
        return pgd(objective, inputs, **settings)


class Method(LegacySpellings):
    """Base class of every pretraining method; subclasses override the class attributes.

    What a method declares is grouped into typed specs (``bench.methodkit.spec``), one per reader of the
    harness, so a new concern extends a spec rather than this contract: ``model`` (network and BN routing),
    ``variant`` (A-InfoNCE variants), ``teacher`` (distillation) and ``published_settings`` (its tables).
    The old loose attributes (``bn_branches``, ``requires_teacher``...) still work, with a warning
    (``LegacySpellings``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    model: ClassVar[ModelSpec] = ModelSpec()
    variant: ClassVar[VariantSpec] = VariantSpec()
    # None, or the method whose pretrained encoder this one distils (DeACL; bench.methodkit.spec.TeacherSpec).
    teacher: ClassVar[TeacherSpec | None] = None
    published_settings: ClassVar[PublishedSettings] = PublishedSettings()
    Params: ClassVar[type[MethodParams]] = MethodParams
    # The view augmentation its training_step applies (e.g. bench.engine.views.StrongAugment(crop_scale=...)):
    # a callable (images in [0, 1], generator) -> images. The harness never calls it; declared here
    # so every method states its views in one place. Not a spec: tests and ``bench speed`` replace it.
    augment: ClassVar[Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = None
    # Whether ``--methods all`` selects it. The smoke run of ``all`` must stay within ~10 minutes on two
    # cores, so ``all`` is the A-InfoNCE paper's table (SimCLR, ACL, RoCL, AdvCL and their variants)
    # plus plugins; the newer methods (DeACL, DynACL, AIR families) are selected by name or pattern.
    selected_by_all: ClassVar[bool] = True
    # The post stage (LP-AFT between pretraining and finetuning) is a run option, not a method: any method runs
    # with it as ``<name>++`` or ``--post pp`` (bench.runs.plan). A method whose paper publishes it under its
    # own name lists it here (post label -> bench.methodkit.post.PostForm): ``<name>++`` is then listed and
    # its settings are the rows of ``published_settings`` under that name (DynACL++, methods/dynacl.py).
    post_forms: ClassVar[Mapping[str, PostForm]] = {}
    # Fields of ``Params`` the method's own code never reads (besides the variant knobs, which
    # ``unread_params`` adds): a user value for one would change nothing, so it is refused.
    ignored_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: MethodParams | None = None):
        self.params = params if params is not None else self.Params()
        self.adaptive: AdaptiveAlpha | None = None
        if self.variant.inferior_positives and self.params.adaptive_epochs > 0:
            self.adaptive = AdaptiveAlpha(self.params.alpha, self.params.adaptive_epochs, self.params.d_min)
        self._alpha = float(self.params.alpha)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def published(cls, preset: str, dataset: str) -> Published:
        """The published settings of this method for ``preset`` and ``dataset``.

        The row of the registered name, else of the base method (a plugin's derived variants
        share their base's row), else an empty ``Published``. A paper row lists its datasets;
        a dataset it lacks is a ``ConfigError`` unless the row has a ``"*"`` entry (settings that
        do not depend on the dataset). The smoke preset has one row per name, for any dataset.
        """
        if preset not in PRESETS:
            raise ConfigError(f"preset={preset!r} is invalid: allowed {list(PRESETS)}")
        names = [name for name in (cls.name, cls.variant.base) if name]
        return cls.published_settings.row(names, preset, dataset, cls.name)

    @classmethod
    def make_params(cls, overrides: Mapping[str, Any]) -> MethodParams:
        """``Params`` from overrides of its defaults: strings (CLI) are coerced to each field's type,
        an unknown name fails with the allowed ones, and ``check_params`` checks the ranges."""
        types = field_types(cls.Params)
        for key in overrides:
            if key not in types:
                raise ConfigError(f"method parameter {key!r} of {cls.name!r} is unknown: allowed {sorted(types)}")
        prefix = f"{cls.name}." if cls.name else ""
        params = cls.Params(**{key: coerce(types[key], raw, f"{prefix}{key}") for key, raw in overrides.items()})
        cls.check_params(params)
        return params

    @classmethod
    def unread_params(cls) -> frozenset[str]:
        """The ``Params`` fields this method never reads: the inferior-positive knobs unless it is an
        ``-ip`` variant, the hard-negative ones unless it is an ``-hn`` variant, and ``ignored_params``."""
        unread = set(cls.ignored_params)
        if not cls.variant.inferior_positives:
            unread |= set(IP_PARAMS)
        if not cls.variant.hard_negatives:
            unread |= set(HN_PARAMS)
        return frozenset(unread)

    @classmethod
    def check_params(cls, params: MethodParams) -> None:
        """Raise ``ConfigError`` on an out-of-range value; subclasses extend it with ``super()``."""
        if not params.temperature > 0:
            raise ConfigError(f"temperature={params.temperature!r} is invalid: allowed numbers > 0")
        if not 0.0 <= params.alpha <= 1.0:
            raise ConfigError(f"alpha={params.alpha!r} is invalid: allowed numbers in [0, 1]")
        if not 0.0 <= params.tau_plus < 1.0:
            raise ConfigError(f"tau_plus={params.tau_plus!r} is invalid: allowed numbers in [0, 1)")
        for name in ("adv_weight", "beta", "d_min", "adaptive_epochs"):
            if getattr(params, name) < 0:
                raise ConfigError(f"{name}={getattr(params, name)!r} is invalid: allowed numbers >= 0")
        allowed = list(QUIRKS) if cls.variant.official_quirks else ["none"]
        if params.quirks not in allowed:
            raise ConfigError(f"quirks={params.quirks!r} is invalid for {cls.name!r}: allowed {allowed}")

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        spec = self.model
        return build_contrastive_model(
            arch,
            spec.branches,
            spec.projector,
            in_channels=in_channels,
            normalization=spec.normalization,
            conv_init=spec.conv_init,
        )

    def setup(self, model: ContrastiveModel, train_images: torch.Tensor, ctx: StepContext) -> None:
        """One-off preparation before the first step (e.g. AdvCL's pseudo-labels)."""

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        """Return ``(loss, logs)`` for one batch of images in [0, 1]."""
        raise NotImplementedError

    def after_step(self, model: ContrastiveModel, ctx: StepContext) -> None:
        """Called by the harness after every optimiser step (never for a step it did not take), with the
        trained module itself (not its compiled wrapper) and the step's context: where a method moves
        what the optimiser does not, e.g. a momentum target (``bench.methodkit.momentum``)."""

    # ------------------------------------------------------------------ after pretraining
    def encoder_for_finetuning(self, model: ContrastiveModel) -> ContrastiveModel:
        """The encoder that is post-processed, saved and finetuned after pretraining: ``model``.

        DynACL overrides it: its checkpoint for downstream use is the momentum (EMA) key encoder.
        The result is a ``ContrastiveModel`` built like ``build_model``'s (same branches, projector):
        ``bench.runs.stages`` stores it as ``encoder.pt`` and loads stored encoders into
        ``encoder_for_finetuning(build_model(...))``, so it must not depend on the weights' values.
        """
        return model

    # ------------------------------------------------------------------ A-InfoNCE
    def contrastive_loss(
        self, features: torch.Tensor, adversarial: Sequence[bool], *, detach_contrast: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """The method's InfoNCE over [B, V, D] features, with this variant's asymmetry."""
        return a_infonce(
            features,
            adversarial,
            temperature=self.params.temperature,
            detach_contrast=detach_contrast,
            scale=scale,
            **self.asymmetry(),
        )

    def asymmetry(self) -> dict[str, Any]:
        """This variant's A-InfoNCE arguments: α and w when adversarial views are inferior
        positives, (β, τ⁺) when they are hard negatives (a method may map its paper's w: RoCL's override).
        ``contrastive_loss`` passes them to ``a_infonce``; a method's official reproduction
        (``bench.engine.losses.official_*``) takes the same."""
        return {
            "alpha": self._alpha if self.variant.inferior_positives else None,
            "adv_weight": self.params.adv_weight if self.variant.inferior_positives else 1.0,
            "hard_negatives": (self.params.beta, self.params.tau_plus) if self.variant.hard_negatives else None,
        }

    @torch.no_grad()
    def update_alpha(
        self, model: ContrastiveModel, clean: torch.Tensor, adversarial: torch.Tensor, ctx: StepContext
    ) -> float:
        """Adaptive α (AdvCL-IP scripts): mean L2 distance of 'normal'-branch features.

        As released, the distance uses the 'normal' BN branch in the current (train) mode.
        """
        if self.adaptive is None:
            return self._alpha
        shards = shards_of(ctx)  # the mean over every shard of the batch (all ranks under DDP)
        distance = F.pairwise_distance(model.features(clean, "normal"), model.features(adversarial, "normal")).mean()
        self._alpha = self.adaptive.update(ctx.epoch, float(shards.mean(distance)), shards.instances(clean.shape[0]))
        return self._alpha

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "adaptive": self.adaptive.state_dict() if self.adaptive else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._alpha = state["alpha"]
        if self.adaptive is not None and state.get("adaptive") is not None:
            self.adaptive.load_state_dict(state["adaptive"])
