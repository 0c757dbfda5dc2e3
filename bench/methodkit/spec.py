"""Typed specs: what a method declares, grouped by who reads it.

A method used to declare some twenty loose class attributes, each read by a different corner of the
harness; a new concern meant a new attribute on ``Method`` and a new special case where it was read.
They are now four frozen dataclasses, one per reader, each checked when it is built (a bad value
fails in one line naming the allowed ones, at import of the method's module):

- ``ModelSpec`` (``Method.model``): the network and its BatchNorm routing, read by ``build_model``,
  by the stages that store and reload encoders and by finetuning (which branch it loads).
- ``VariantSpec`` (``Method.variant``): the method's place among the A-InfoNCE variants, read by the
  registry (which methods get ``-ip``/``-hn``/``-iphn``), the loss (``Method.asymmetry``), the
  parameter checks and the reports' order.
- ``TeacherSpec`` (``Method.teacher``; None: no teacher): the method distils a pretrained encoder of
  another method (DeACL), read by the plan, which pretrains or reuses that run first.
- ``PublishedSettings`` (``Method.published_settings``): the paper and smoke tables of ``Published``
  rows, read by ``Method.published``.

A derived method (``bench.methodkit.variants``) changes its base's spec with ``dataclasses.replace``.

The old spellings keep working for plugins written against them: a class body that sets e.g.
``bn_branches`` or ``requires_teacher`` is folded into the specs when the class is made
(``fold_legacy``, one ``DeprecationWarning`` naming the new spelling), and reading an old name on a
method or its class goes through ``LegacySpellings`` (a descriptor per name: cheap, and it warns too).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.engine.models import CONV_INITS, NORMALIZATIONS, PROJECTORS
from bench.errors import ConfigError


def _check_choice(what: str, value: object, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{what}={value!r} is invalid: allowed {allowed}")


def _check_flags(spec: object) -> None:
    """A bool field set to anything but a bool (e.g. the string 'False', which is true) fails."""
    for item in dataclasses.fields(spec):  # type: ignore[arg-type]
        value = getattr(spec, item.name)
        if item.type == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{type(spec).__name__}.{item.name}={value!r} is invalid: allowed [True, False]")


@dataclass(frozen=True)
class ModelSpec:
    """The network a method trains and how its BatchNorm is routed.

    branches: the BN branches of the encoder and projector (``bench.engine.models.build_encoder``): one
        set of statistics per kind of input, e.g. ('normal', 'pgd') for clean and adversarial views.
    projector: a key of ``bench.engine.models.PROJECTORS`` (the released head of the method).
    normalization: a key of ``bench.engine.models.NORMALIZATIONS``, applied inside the model.
    conv_init: one of ``bench.engine.models.CONV_INITS`` ('kaiming_normal': torchvision-style ResNets).
    finetune_bn: the branch that finetuning (and a post stage) loads; one of ``branches``.
    synced_bn: under sharding, one BN over the whole batch (RoCL's released SyncBatchNorm) instead of
        one per shard (``bench.engine.shards``).
    """

    branches: tuple[str, ...] = ("normal",)
    projector: str = "simclr"
    normalization: str = "none"
    conv_init: str = "default"
    finetune_bn: str = "normal"
    synced_bn: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.branches, str) or not self.branches or not all(isinstance(b, str) for b in self.branches):
            raise ConfigError(f"ModelSpec.branches={self.branches!r} is invalid: allowed a non-empty tuple of names")
        object.__setattr__(self, "branches", tuple(self.branches))  # a list from a plugin: hashable, frozen
        if self.branches[0] != "normal":  # the clean branch: forward(), adaptive α and the post stage read it
            raise ConfigError(f"ModelSpec.branches={self.branches!r} is invalid: allowed names starting with 'normal'")
        _check_choice("ModelSpec.projector", self.projector, sorted(PROJECTORS))
        # 'custom' is a loaded checkpoint's own statistics (bench.engine.checkpoints), not one a method declares
        _check_choice("ModelSpec.normalization", self.normalization, sorted(set(NORMALIZATIONS) - {"custom"}))
        _check_choice("ModelSpec.conv_init", self.conv_init, list(CONV_INITS))
        _check_choice("ModelSpec.finetune_bn", self.finetune_bn, list(self.branches))
        _check_flags(self)


# The model of ACL (Jiang et al. 2020) and of the methods built on its released code (DynACL, ACL-AIR):
# dual BN (clean 'normal', adversarial 'pgd'; finetuning loads 'pgd'), ACL's projector, ImageNet
# normalisation inside the model and the torchvision-style ResNet's kaiming-normal convolutions.
ACL_MODEL = ModelSpec(
    branches=("normal", "pgd"),
    projector="acl",
    normalization="imagenet",
    conv_init="kaiming_normal",
    finetune_bn="pgd",
)


@dataclass(frozen=True)
class VariantSpec:
    """The method's place among the A-InfoNCE variants (Yu et al., ECCV 2022).

    adversarial_views: it trains on adversarial views; with ``uses_contrastive_loss`` it gets the
        ``-ip``/``-hn``/``-iphn`` variants, and reports list it after the non-adversarial anchors.
    uses_contrastive_loss: its loss goes through ``Method.contrastive_loss`` (False for e.g. BYOL's
        regression loss: the variants would train exactly like the base, so it gets none).
    inferior_positives, hard_negatives: what the adversarial views are in this variant (set by
        ``bench.methodkit.variants.make_variant``; both False for a base method).
    base: the registered name of the method a variant derives from ('' for a base method).
    note: shown in ``bench list`` for the derived variants (how the suite extends the released loss).
    official_quirks: ``quirks='official'`` reproduces the released code's arithmetic
        (``bench.engine.released_losses``); otherwise only 'none' is allowed.
    """

    adversarial_views: bool = False
    uses_contrastive_loss: bool = True
    inferior_positives: bool = False
    hard_negatives: bool = False
    base: str = ""
    note: str = ""
    official_quirks: bool = False

    def __post_init__(self) -> None:
        _check_flags(self)
        for name in ("base", "note"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"VariantSpec.{name}={getattr(self, name)!r} is invalid: allowed a string")


@dataclass(frozen=True)
class TeacherSpec:
    """The method learns from a frozen, pretrained encoder of the method registered as ``method``.

    When the run's parameters name no ``teacher`` file, the harness pretrains or reuses that method's
    run (same preset, data, model and seed), loads its encoder and calls the method's
    ``set_teacher(model, info)`` before ``setup`` (methods/deacl.py)."""

    method: str

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"TeacherSpec.method={self.method!r} is invalid: allowed a registered method name")


@dataclass(frozen=True)
class Published:
    """One row of a method's published settings.

    source: where the values come from: the released script by repository and path (paper
        preset) or why the smoke preset sets them.
    pretrain: overrides of ``bench.config.PretrainConfig`` fields.
    params: overrides of the method's ``Params`` fields.
    The mappings are copied, so rows built from one shared dict stay independent.
    """

    source: str = ""
    pretrain: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pretrain", dict(self.pretrain))
        object.__setattr__(self, "params", dict(self.params))


@dataclass(frozen=True)
class PublishedSettings:
    """The method's published settings, as data at the top of its file.

    paper: registered name -> dataset (or '*': any) -> ``Published`` row citing the released script.
    smoke: registered name -> ``Published`` row of the smoke preset.
    A derived variant without a row of its own uses its base's (``Method.published``)."""

    paper: Mapping[str, Mapping[str, Published]] = field(default_factory=dict)
    smoke: Mapping[str, Published] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = "paper: {name: {dataset or '*': Published(...)}}, smoke: {name: Published(...)}"
        tables = [self.paper, self.smoke, *(self.paper.values() if isinstance(self.paper, Mapping) else ())]
        if not all(isinstance(table, Mapping) for table in tables):
            raise ConfigError(f"PublishedSettings {self!r} is invalid: allowed {shape}")
        rows = [row for table in self.paper.values() for row in table.values()] + list(self.smoke.values())
        for row in rows:
            if not isinstance(row, Published):
                raise ConfigError(f"PublishedSettings row {row!r} is invalid: allowed Published(...) rows ({shape})")

    def row(self, names: Sequence[str], preset: str, dataset: str, label: str) -> Published:
        """The row of the first of ``names`` that has one for ``preset`` (else an empty ``Published``). A paper
        row lists its datasets: one it lacks is a ``ConfigError`` naming ``label`` unless the row has '*'."""
        if preset == "smoke":
            return next((self.smoke[name] for name in names if name in self.smoke), Published())
        for name in names:
            if name in self.paper:
                row = self.paper[name]
                if dataset in row or "*" in row:
                    return row[dataset] if dataset in row else row["*"]
                raise ConfigError(
                    f"dataset={dataset!r} is invalid for the paper settings of {label!r}: allowed {sorted(row)}"
                )
        return Published()


SPECS = {"model": ModelSpec, "variant": VariantSpec, "published_settings": PublishedSettings}

# Old class attribute -> (spec attribute, field). ``requires_teacher`` (a bool) and ``teacher_method``
# become ``teacher = TeacherSpec(method)`` (or None); ``synced_batch_norm`` was read by getattr.
LEGACY = {
    "bn_branches": ("model", "branches"),
    "projector": ("model", "projector"),
    "normalization": ("model", "normalization"),
    "conv_init": ("model", "conv_init"),
    "finetune_bn": ("model", "finetune_bn"),
    "synced_batch_norm": ("model", "synced_bn"),
    "has_adversarial_views": ("variant", "adversarial_views"),
    "uses_contrastive_loss": ("variant", "uses_contrastive_loss"),
    "inferior_positives": ("variant", "inferior_positives"),
    "hard_negatives": ("variant", "hard_negatives"),
    "base_name": ("variant", "base"),
    "variant_note": ("variant", "note"),
    "official_quirks": ("variant", "official_quirks"),
    "paper": ("published_settings", "paper"),
    "smoke": ("published_settings", "smoke"),
    "requires_teacher": ("teacher", None),
    "teacher_method": ("teacher", "method"),
}


def new_spelling(name: str) -> str:
    """How the old attribute ``name`` is spelled now, for the deprecation warnings."""
    spec, item = LEGACY[name]
    if name == "requires_teacher":
        return "teacher = TeacherSpec(method=...) (None: no teacher)"
    if spec == "teacher":
        return f"teacher = TeacherSpec({item}=...)"
    return f"{spec} = {SPECS[spec].__name__}({item}=...)"


def fold_legacy(cls: type) -> None:
    """Fold the old attributes set in ``cls``'s own body into its specs (on top of the inherited ones),
    remove them from the class (reads go through ``LegacySpellings``) and warn once, naming the new
    spelling of each."""
    found = {name: vars(cls)[name] for name in LEGACY if name in vars(cls)}
    if not found:
        return
    for name in found:
        delattr(cls, name)
    changes: dict[str, dict[str, Any]] = {}
    for name, value in found.items():
        spec, item = LEGACY[name]
        if spec != "teacher":
            changes.setdefault(spec, {})[item] = value
    for spec, values in changes.items():
        setattr(cls, spec, dataclasses.replace(getattr(cls, spec), **values))
    inherited = cls.teacher  # type: ignore[attr-defined]
    if found.get("requires_teacher", inherited is not None):
        cls.teacher = TeacherSpec(found.get("teacher_method", inherited.method if inherited else ""))  # type: ignore[attr-defined]
    elif "requires_teacher" in found:
        cls.teacher = None  # type: ignore[attr-defined]
    spellings = "; ".join(f"{name} -> {new_spelling(name)}" for name in found)
    warnings.warn(
        f"{cls.__qualname__} sets deprecated method attributes: {spellings} (bench.methodkit.spec)",
        DeprecationWarning,
        stacklevel=3,  # the class statement of the method
    )


def check_specs(cls: type) -> None:
    """Each spec attribute of ``cls`` holds its spec type (a plugin assigning e.g. a tuple fails here)."""
    for name, kind in {**SPECS, "teacher": TeacherSpec}.items():
        value = getattr(cls, name)
        if not isinstance(value, kind) and not (name == "teacher" and value is None):
            allowed = f"a {kind.__name__}" + (" or None" if name == "teacher" else "")
            raise ConfigError(f"{cls.__qualname__}.{name}={value!r} is invalid: allowed {allowed}")


class _Legacy:
    """Reads the old attribute ``name`` from the specs, with a ``DeprecationWarning``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type) -> Any:
        spec, item = LEGACY[self.name]
        warnings.warn(f"{self.name} is deprecated: {new_spelling(self.name)}", DeprecationWarning, stacklevel=2)
        if spec == "teacher":
            teacher = owner.teacher  # type: ignore[attr-defined]
            return teacher is not None if item is None else (teacher.method if teacher else "")
        return getattr(getattr(owner, spec), item)


class LegacySpellings:
    """Base of ``Method`` that keeps the old spellings working: a subclass setting an old attribute is
    folded into its specs, and reading one on a method or its class goes to the specs (both warn). Kept
    out of ``Method`` itself so that the contract lists only what is current; delete it with them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fold_legacy(cls)
        check_specs(cls)


for _name in LEGACY:
    setattr(LegacySpellings, _name, _Legacy(_name))
