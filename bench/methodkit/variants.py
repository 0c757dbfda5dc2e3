"""Derived methods: the A-InfoNCE variants (Yu et al., ECCV 2022) of any adversarial base method, and
the ``++`` form of any method (its encoder post-processed by DynACL++'s LP-AFT stage, ``bench.methodkit.post``).

The variants are not copies: each is a subclass of the base that only flips the flags read
by ``Method.contrastive_loss``, so the base's views, attack and loss code serve all four.
- ``-ip``: adversarial views are *inferior positives* (asymmetric stop-gradient α / 1−α, w).
- ``-hn``: adversarial views are *hard negatives* (HCL re-weighting with β, τ⁺).
- ``-iphn``: both.
- ``++`` (``--post pp``): the method as it is, then LP-AFT on K-means pseudo-labels before the
  finetuning schemes. It pretrains as the method itself (``Method.pretrains_as``), so a run of both
  shares one encoder.
This module only builds the classes; ``bench.methodkit.registry`` registers them (the variants at discovery,
a ``++`` form when its name is first asked for).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError
from bench.methodkit.method import Method, Published
from bench.methodkit.post import POST_STAGES, SMOKE_POST_PARAMS, PostParams, PostStage, settings_for

POST_SUFFIX = "++"

VARIANTS = {
    "ip": (True, False, "adversarial views as inferior positives (asymmetric stop-gradient)"),
    "hn": (False, True, "adversarial views as hard negatives (HCL re-weighting)"),
    "iphn": (True, True, "inferior positives and hard negatives"),
}


def make_variant(base: type[Method], suffix: str) -> type[Method]:
    """A subclass of ``base`` with the A-InfoNCE flags of ``suffix`` set.

    The flags act only through ``Method.asymmetry`` (which ``contrastive_loss`` and the official losses
    call). A base whose step never asks for it would give a variant that trains exactly like the base,
    a silent copy in every table; so the variant's first step checks that it did and otherwise fails in
    one line naming the fix (``VariantSpec(uses_contrastive_loss=False)`` on the base: no variants)."""
    inferior, hard, summary = VARIANTS[suffix]
    note = f" [{base.variant.note}]" if base.variant.note else ""

    def asymmetry(self) -> dict[str, Any]:
        self.asymmetry_calls = getattr(self, "asymmetry_calls", 0) + 1
        return base.asymmetry(self)

    def training_step(self, model, images, ctx):
        before = getattr(self, "asymmetry_calls", 0)
        result = base.training_step(self, model, images, ctx)
        if not getattr(self, "variant_checked", False):
            if getattr(self, "asymmetry_calls", 0) == before:
                raise ConfigError(
                    f"method {self.name!r} would train exactly like {base.name!r}: {base.name}.training_step "
                    "never calls self.contrastive_loss (nor self.asymmetry), through which the -ip/-hn/-iphn "
                    f"variants act; allowed: a loss through self.contrastive_loss, or "
                    f"variant = VariantSpec(uses_contrastive_loss=False) on {base.__name__} (no variants)"
                )
            self.variant_checked = True
        return result

    return type(
        f"{base.__name__}_{suffix.upper()}",
        (base,),
        {
            "__doc__": f"{base.name} with {summary} (A-InfoNCE).",
            "__module__": base.__module__,
            "description": f"{base.name.upper()} + A-InfoNCE: {summary}{note}",
            "variant": dataclasses.replace(
                base.variant, inferior_positives=inferior, hard_negatives=hard, base=base.name
            ),
            "asymmetry": asymmetry,
            "training_step": training_step,
        },
    )


def variant_names(base: type[Method]) -> dict[str, str]:
    """``{registered name: suffix}`` of the three variants of ``base`` (``<base>-ip``, ``-hn``, ``-iphn``)."""
    return {f"{base.name}-{suffix}": suffix for suffix in VARIANTS}


def post_name(name: str, post: str = "pp") -> str:
    """The registered name of ``name`` with the post stage ``post`` (``acl`` → ``acl++``)."""
    if post not in POST_STAGES[1:]:
        raise ValueError(f"post={post!r} is invalid: allowed {list(POST_STAGES[1:])}")
    return name + POST_SUFFIX


def make_post_method(base: type[Method], rebuild: Callable[[str, dict[str, Any]], Any]) -> type[Method]:
    """``<base>++``: ``base`` unchanged, then the LP-AFT stage on the encoder it finetunes.

    The stage trains ``base.model.finetune_bn`` (the branch the schemes load) on K-means labels of features
    through ``'normal'``; its settings are ``bench.methodkit.post.PostParams`` (DYNACL's ``LPAFT.py`` defaults,
    K = 10 as ``assign_label.py``), the smoke preset's are ``SMOKE_POST_PARAMS``. ``rebuild(name, values)``
    unpickles its parameters (the registry's ``rebuild_post_params``: this module sits below the registry)."""
    if base.post:
        raise ValueError(f"method {base.name!r} already has the post stage {base.post!r}")

    @dataclass
    class PostMethodParams(base.Params, PostParams):
        def __reduce__(self):  # a class made here has no importable name: pickle rebuilds it by method name
            return (rebuild, (base.name, dataclasses.asdict(self)))

    PostMethodParams.__name__ = PostMethodParams.__qualname__ = f"{base.Params.__name__}PlusPlus"
    PostMethodParams.__doc__ = f"{base.name}'s parameters and the post stage's (bench.methodkit.post.PostParams)."

    class PostMethod(PostStage, base):
        __doc__ = f"{base.name}, then LP-AFT on K-means pseudo-labels (post stage 'pp', bench.methodkit.post)."
        Params = PostMethodParams
        pretrains_as = base.name
        selected_by_all = False
        description = f"{base.description}, then LP-AFT on K-means pseudo-labels (--post pp)"

        @classmethod
        def published(cls, preset: str, dataset: str) -> Published:
            """The base method's settings; the stage's own are LPAFT.py's defaults (smoke: SMOKE_POST_PARAMS)."""
            row = base.published(preset, dataset)
            stage = SMOKE_POST_PARAMS if preset == "smoke" else {}
            note = "post stage: LP 1 + AFT 2 epochs, batch 64, PGD-2" if stage else "post stage: PKU-ML/DYNACL LPAFT.py"
            source = "; ".join(filter(None, (row.source, note)))
            return Published(source=source, pretrain=row.pretrain, params={**row.params, **stage})

        def post_settings(self, config: Any):
            return settings_for(self.params, config, bn=self.model.finetune_bn)

    PostMethod.__name__ = PostMethod.__qualname__ = f"{base.__name__}PlusPlus"
    PostMethod.__module__ = base.__module__
    return PostMethod
