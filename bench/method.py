"""The method contract: what a pretraining method declares and implements.

A method is a small class registered under a name. It declares its BatchNorm branches,
its projector and which BN branch finetuning loads, and implements ``training_step``:
build its views, make its adversarial views with ``bench.attacks.pgd`` on its own
objective, and return the loss. Everything else (loop, optimiser, schedule, AMP, devices,
checkpoints, evaluation) belongs to the harness.

The A-InfoNCE knobs (Yu et al., ECCV 2022) live here, in ``MethodParams``, because every
adversarial method gets the ``-ip``/``-hn``/``-iphn`` variants from the same code: a
method passes its views to ``self.contrastive_loss(features, adversarial)`` and the
variant flags decide whether adversarial views are inferior positives and/or hard
negatives (``bench.variants``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F

from bench.config import AttackConfig, ConfigError, _coerce
from bench.losses import AdaptiveAlpha, a_infonce
from bench.models import ContrastiveModel, build_contrastive_model
from bench.results import RunDir
from bench.shards import of as shards_of


@dataclass
class MethodParams:
    """Hyperparameters every method has; the A-InfoNCE ones are used by its variants.

    alpha: share of the clean<->adversarial pull that reaches the clean view (IP).
    adv_weight: w, weight of adversarial<->clean positive terms.
    adaptive_epochs: K, epochs over which the mean clean/adversarial feature distance is
        measured before α adapts per step (0 = fixed α).
    d_min: feature distance under which α becomes 0.5 (symmetric).
    beta, tau_plus: hard-negative concentration and positive-class prior (HN).
    quirks: 'none' (formulas of DESIGN §3) or 'official' (released code, bit for bit).
    """

    alpha: float = 0.2
    adv_weight: float = 1.0
    adaptive_epochs: int = 0
    d_min: float = 0.4
    beta: float = 1.0
    tau_plus: float = 0.1
    quirks: str = "none"


@dataclass(frozen=True)
class Published:
    """A method's published settings for one preset and dataset, and where they come from."""

    source: str = ""
    pretrain: Mapping[str, Any] = field(default_factory=dict)  # overrides of bench.config.PretrainConfig
    params: Mapping[str, Any] = field(default_factory=dict)  # overrides of the method's Params


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
    # bench.shards.Shards: the step's shards (views, random starts, gathers); None = one shard drawing
    # from ``generator``. Methods reach it through ``bench.shards.of(ctx)``.
    shards: Any = None
    # bench speed's reference-style path: recompute what the released code recomputes (same numbers).
    reference_style: bool = False


class Method:
    """Base class of every pretraining method; subclasses override the class attributes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    bn_branches: ClassVar[tuple[str, ...]] = ("normal",)
    projector: ClassVar[str] = "simclr"
    normalization: ClassVar[str] = "none"
    conv_init: ClassVar[str] = "default"  # or 'kaiming_normal' (bench.models.build_contrastive_model)
    finetune_bn: ClassVar[str] = "normal"
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Which views of ``contrastive_loss`` are adversarial decides what -ip/-hn change;
    # a method with adversarial views (``has_adversarial_views``) gets the three variants.
    has_adversarial_views: ClassVar[bool] = False
    inferior_positives: ClassVar[bool] = False
    hard_negatives: ClassVar[bool] = False
    base_name: ClassVar[str] = ""
    variant_note: ClassVar[str] = ""  # shown in `bench list` for the derived variants

    def __init__(self, params: MethodParams | None = None):
        self.params = params if params is not None else self.Params()
        self.temperature = 0.5
        self.adaptive: AdaptiveAlpha | None = None
        if self.inferior_positives and self.params.adaptive_epochs > 0:
            self.adaptive = AdaptiveAlpha(self.params.alpha, self.params.adaptive_epochs, self.params.d_min)
        self._alpha = float(self.params.alpha)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def preset_params(cls, preset: str, dataset: str) -> dict[str, Any]:
        """Hyperparameters for a preset and dataset (overrides of ``Params`` defaults).

        For ``paper`` these are the released scripts' settings; variants read
        ``cls.inferior_positives`` / ``cls.hard_negatives`` to pick their row.
        """
        return {}

    @classmethod
    def preset_pretrain(cls, preset: str, dataset: str) -> dict[str, Any]:
        """Optimiser settings (overrides of ``PretrainConfig``) for a preset, e.g. LARS for ACL."""
        return {}

    @classmethod
    def published(cls, preset: str, dataset: str) -> Published:
        """The settings of ``preset`` for ``dataset`` (pretraining overrides and parameters)."""
        return Published(pretrain=cls.preset_pretrain(preset, dataset), params=cls.preset_params(preset, dataset))

    @classmethod
    def make_params(cls, overrides: Mapping[str, Any]) -> MethodParams:
        """Build ``Params`` from a dict (CLI strings coerced to each field's type), rejecting unknown names."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Params)}
        for key in overrides:
            if key not in defaults:
                raise ConfigError(f"method parameter {key!r} of {cls.name!r} is unknown: allowed {list(defaults)}")
        params = cls.Params(**{key: _coerce(defaults[key], raw, f"{cls.name}.{key}") for key, raw in overrides.items()})
        if not 0.0 <= params.alpha <= 1.0:
            raise ConfigError(f"alpha={params.alpha!r} is invalid: allowed numbers in [0, 1]")
        if not 0.0 <= params.tau_plus < 1.0:
            raise ConfigError(f"tau_plus={params.tau_plus!r} is invalid: allowed numbers in [0, 1)")
        if params.quirks not in ("none", "official"):
            raise ConfigError(f"quirks={params.quirks!r} is invalid: allowed ['none', 'official']")
        return params

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        return build_contrastive_model(
            arch, self.bn_branches, self.projector, in_channels=in_channels, normalization=self.normalization,
            conv_init=self.conv_init,
        )

    def setup(self, model: ContrastiveModel, train_images: torch.Tensor, ctx: StepContext) -> None:
        """One-off preparation before the first step (e.g. AdvCL's pseudo-labels)."""

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        """Return ``(loss, logs)`` for one batch of images in [0, 1]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ A-InfoNCE
    def contrastive_loss(
        self, features: torch.Tensor, adversarial: Sequence[bool], *, detach_contrast: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """The method's InfoNCE over [B, V, D] features, with this variant's asymmetry."""
        return a_infonce(
            features,
            adversarial,
            temperature=self.temperature,
            alpha=self._alpha if self.inferior_positives else None,
            adv_weight=self.ip_adv_weight() if self.inferior_positives else 1.0,
            hard_negatives=(self.params.beta, self.params.tau_plus) if self.hard_negatives else None,
            detach_contrast=detach_contrast,
            scale=scale,
            quirks=self.params.quirks,
        )

    def ip_adv_weight(self) -> float:
        """w passed to the loss for inferior positives (a method may map its paper's meaning)."""
        return self.params.adv_weight

    @torch.no_grad()
    def update_alpha(self, model: ContrastiveModel, clean: torch.Tensor, adversarial: torch.Tensor, ctx: StepContext) -> float:
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
