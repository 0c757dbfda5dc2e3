"""DeACL (Zhang et al., ECCV 2022): distil a frozen SimCLR teacher into an adversarially robust student.

Two stages (docs/deacl.md):
1. a standard, non-robust self-supervised teacher: the suite's ``simclr`` run of the same
   preset, data, model and seed (supplied by the harness through ``Method.set_teacher``), or a
   checkpoint file (``--param teacher=PATH``; ``teacher_format=deacl-teacher`` reads the
   solo-learn SimCLR file the released code distils from);
2. the student, initialised from the teacher's encoder (released default; ``student_init=scratch``
   is ``--student_scratch``), trained by this method. One step, as released in pantheon5100/DeACL
   ``solo/methods/mocov2_distillation_AT.py`` (``MoCoV2KDAT.training_step``, ``generate_training_AE``):
   - x = weak view (RandomCrop with padding 4 at 32 px, horizontal flip), t = teacher(x): the
     512-d pooled feature, teacher frozen in eval mode (the projectors are Identity);
   - x̃ = PGD on the student in eval mode, from x + U(-ε, ε), maximising -Σ cos(student(x̃), t)
     (released ε 8/255, step 2/255, 5 steps: the harness's paper attack);
   - one student forward of [x; x̃] in train mode (BN statistics over both halves), then
     L = -mean cos(s(x), t) - k · mean cos(s(x̃), s(x)), k = 2 (``--trades_k``); the gradient
     reaches the student through both s(x) and s(x̃), never the teacher.

No A-InfoNCE variants: DeACL's loss is a cosine distillation, not an InfoNCE. It has no
negatives for ``-hn`` to re-weight, and its clean/adversarial pull ``cos(s(x̃), s(x))`` is not a
positive pair inside a contrastive softmax for ``-ip`` to make asymmetric, so
``VariantSpec.adversarial_views`` (which means "adversarial views inside ``contrastive_loss``") is False.

Architecture (``bench.engine.models``): the released ResNet-18 pads its stem by 2 (``model.arch
resnet18_deacl``; the suite's common ``resnet18`` pads by 1) and normalises inside the model with
CIFAR-10 statistics (also on CIFAR-100). The smoke preset runs the small CNN with the same
normalisation. Deviations from the released code (docs/deacl.md): no online linear probe
(it trains on detached features with labels: nothing reaches the encoder); the PGD random start
is clamped to [0, 1] before the first step (released: after it); the learning rate is interpolated
per iteration (released: per epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import ConfigError
from bench.engine import progress
from bench.engine.checkpoints import FORMATS, load_encoder
from bench.engine.models import NORMALIZATIONS, ContrastiveModel, Normalize
from bench.engine.shards import of as shards_of
from bench.engine.views import WeakAugment
from bench.methodkit.method import Method, MethodParams, Published, StepContext, pretraining_pgd
from bench.methodkit.registry import register
from bench.methodkit.spec import ModelSpec, PublishedSettings, TeacherSpec

# Released schedule: LinearWarmupCosineAnnealingLR stepped per epoch, 0.003 at epoch 0 rising
# linearly to lr at epoch 9, cosine from epoch 10 to 0 at epoch 100. Our per-iteration warm-up over
# 9 epochs from 0.003 hits the released value at the start of every warm-up epoch.
_RELEASED_OPTIMIZER = {
    "optimizer": "sgd",
    "lr": 0.5,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 256,
    "epochs": 100,
    "warmup_epochs": 9,
    "warmup_start_lr": 0.003 / 0.5,
    "min_lr_fraction": 0.0,
}
_SCHEDULE_SOURCE = (
    "solo/args/utils.py: SGD momentum 0.9, lr × batch/256 = 0.5; "
    "solo/methods/base_for_adversarial_training.py: warmup_cosine, "
    "10 warm-up epochs from 0.003, floor 0"
)
PAPER = {  # registered name -> dataset -> settings, each citing the released script
    "deacl": {
        "cifar10": Published(
            source=(
                f"pantheon5100/DeACL bash_files/DeACL_cifar10_resnet18.sh (precision 32, --trades_k 2); "
                f"{_SCHEDULE_SOURCE}"
            ),
            pretrain=_RELEASED_OPTIMIZER,
            params={"distill_weight": 2.0, "student_init": "teacher"},
        ),
        "cifar100": Published(
            source=(
                f"pantheon5100/DeACL bash_files/DeACL_cifar100_resnet18.sh (precision 16, --trades_k 2, teacher "
                f"simclr_cifar10: pass --param teacher= a CIFAR-10 simclr encoder to match it); "
                f"{_SCHEDULE_SOURCE}"
            ),
            pretrain=_RELEASED_OPTIMIZER,
            params={"distill_weight": 2.0, "student_init": "teacher"},
        ),
    },
}
SMOKE: dict[str, Published] = {}  # the smoke preset's own settings and the Params defaults (k = 2)
STUDENT_INITS = ("teacher", "scratch")


@dataclass
class DeACLParams(MethodParams):
    """DeACL's hyperparameters (the inherited A-InfoNCE knobs are unused: no variants).

    teacher: checkpoint file of the teacher encoder; '' = the harness supplies the ``simclr``
        encoder of the same preset, data, model and seed.
    teacher_format: the ``bench.engine.checkpoints`` format of that file ('deacl-teacher': the released
        solo-learn SimCLR checkpoint).
    distill_weight: k, weight of the adversarial-to-clean cosine term (released ``--trades_k``).
    student_init: 'teacher' (released default) or 'scratch' (``--student_scratch``).
    """

    teacher: str = ""
    teacher_format: str = "bench"
    distill_weight: float = 2.0
    student_init: str = "teacher"


def distillation_loss(
    student_clean: torch.Tensor, student_adversarial: torch.Tensor, teacher: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeACL's loss on [B, D] features: (-mean cos(s(x), t) - k·mean cos(s(x̃), s(x)), the two means).

    ``teacher`` is a fixed target (computed without gradient); both student tensors get gradient
    from the second term, as released (``student_logits_clean`` is not detached there).
    """
    cos_teacher = F.cosine_similarity(student_clean, teacher, dim=1).mean()
    cos_adversarial = F.cosine_similarity(student_adversarial, student_clean, dim=1).mean()
    return -cos_teacher - weight * cos_adversarial, cos_teacher, cos_adversarial


def _stem(model: ContrastiveModel) -> str:
    """The encoder class and its stem padding: equal shapes do not mean an equal function."""
    encoder = model.encoder
    padding = getattr(encoder, "stem_padding", None)
    return type(encoder).__name__ + (f" (stem padding {padding})" if padding is not None else "")


def _normalization(model: ContrastiveModel) -> str:
    """The model's input normalisation by name ('none', 'imagenet', 'cifar10', else 'custom')."""
    if not isinstance(model.normalize, Normalize):
        return "none"
    mean, std = model.normalize.mean.flatten().double(), model.normalize.std.flatten().double()
    for name, statistics in NORMALIZATIONS.items():
        if (
            statistics is not None
            and mean.shape == (len(statistics[0]),)
            and torch.allclose(mean, torch.tensor(statistics[0], dtype=torch.float64), atol=1e-6)
            and torch.allclose(std, torch.tensor(statistics[1], dtype=torch.float64), atol=1e-6)
        ):
            return name
    return "custom"


@register("deacl")
class DeACL(Method):
    description = "DeACL (Zhang et al. 2022): PGD student distilled from a frozen SimCLR teacher (cosine)"
    # torchvision ResNet (the student starts from the teacher by default); no adversarial InfoNCE views
    # (variant: the default VariantSpec), see the module docstring
    model = ModelSpec(projector="none", normalization="cifar10", conv_init="kaiming_normal")
    teacher = TeacherSpec("simclr")
    selected_by_all = False  # outside the A-InfoNCE table: --methods deacl (bench.methodkit.method)
    ignored_params = ("temperature",)  # a cosine distillation loss: no InfoNCE temperature
    Params = DeACLParams
    published_settings = PublishedSettings(PAPER, SMOKE)
    augment = WeakAugment()

    def __init__(self, params: MethodParams | None = None):
        super().__init__(params)
        self.teacher_model: ContrastiveModel | None = None  # ``teacher`` is the class's TeacherSpec
        self.teacher_branch = "normal"
        self.teacher_source = ""

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check_params(cls, params: DeACLParams) -> None:
        super().check_params(params)
        if params.teacher_format not in FORMATS:
            raise ConfigError(f"teacher_format={params.teacher_format!r} is invalid: allowed {list(FORMATS)}")
        if params.student_init not in STUDENT_INITS:
            raise ConfigError(f"student_init={params.student_init!r} is invalid: allowed {list(STUDENT_INITS)}")
        weight = float(params.distill_weight)
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"distill_weight={params.distill_weight!r} is invalid: allowed finite numbers >= 0")

    # ------------------------------------------------------------------ teacher
    def needs_teacher(self) -> bool:
        """Whether the harness (or a test) must call ``set_teacher`` before ``setup``: no teacher yet, no file."""
        return self.teacher_model is None and not self.params.teacher

    def set_teacher(self, teacher: ContrastiveModel, info: dict[str, Any] | None = None) -> None:
        info = info or {}
        self.teacher_model = teacher
        self.teacher_branch = info.get("branch", "normal")
        self.teacher_source = str(info.get("run_id") or info.get("source") or "set_teacher")

    def _resolve_teacher(self) -> ContrastiveModel:
        if self.teacher_model is None and self.params.teacher:
            teacher, info = load_encoder(self.params.teacher, self.params.teacher_format)
            self.set_teacher(teacher, info)
        if self.teacher_model is None:
            raise ConfigError(
                "deacl has no teacher: pass --param teacher=PATH (teacher_format= one of "
                f"{list(FORMATS)}), or leave teacher empty for the harness to supply the simclr encoder "
                "of the same preset, data, model and seed"
            )
        return self.teacher_model

    def setup(self, model: ContrastiveModel, train_images: torch.Tensor, ctx: StepContext) -> None:
        """Freeze the teacher on the run's device; start the student from it (released default)."""
        teacher = self._resolve_teacher().to(ctx.device).eval().requires_grad_(False)
        if teacher.feature_dim != model.feature_dim:
            raise ConfigError(
                f"teacher feature_dim={teacher.feature_dim} is invalid for this student: "
                f"allowed {model.feature_dim} (the cosine compares features directly)"
            )
        if self.params.student_init == "scratch":
            return
        if _stem(teacher) != _stem(model):
            raise ConfigError(
                f"student_init='teacher' is invalid for a teacher of architecture {_stem(teacher)}: "
                f"allowed a teacher of the student's {_stem(model)} (same model.arch), "
                "or student_init=scratch"
            )
        model.encoder.load_state_dict(teacher.encoder.state_dict())
        if _normalization(teacher) != _normalization(model):
            progress.log(
                f"  deacl: the student ({_normalization(model)} input normalisation) starts from a teacher "
                f"with {_normalization(teacher)!r}; the released pair shares CIFAR-10 statistics "
                "(docs/deacl.md)"
            )

    # ------------------------------------------------------------------ step
    def adversarial_view(self, model: ContrastiveModel, clean: torch.Tensor, target: torch.Tensor, ctx: StepContext):
        """x̃ maximising -Σ cos(student(x̃), t), student in eval mode (mode restored afterwards); each
        shard's random start from its own generator (``bench.engine.shards``; the sum is per image, so the
        attack needs no gather)."""
        return pretraining_pgd(
            model,
            lambda inputs: -F.cosine_similarity(model.features(inputs), target, dim=1).sum(),
            clean,
            ctx,
            start=shards_of(ctx).random_start(clean, ctx.attack.epsilon),
        )

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        teacher = self._resolve_teacher().eval()  # released: momentum_backbone.eval() every step
        clean = shards_of(ctx).map(self.augment, images)  # each shard's views from its own generator
        with torch.no_grad():
            target = teacher.features(clean, self.teacher_branch)
        adversarial = self.adversarial_view(model, clean, target, ctx)
        student_clean, student_adversarial = model.features(torch.cat([clean, adversarial])).chunk(2)
        loss, cos_teacher, cos_adversarial = distillation_loss(
            student_clean, student_adversarial, target, self.params.distill_weight
        )
        return loss, {"cos_teacher": cos_teacher.detach(), "cos_adversarial": cos_adversarial.detach()}
