"""Derived methods: the A-InfoNCE variants (Yu et al., ECCV 2022) of any adversarial base method, and
the name of a method with the post stage (``<name>++``: its encoder post-processed by DynACL++'s LP-AFT,
``bench.methodkit.post``; a run option, not a class).

The variants are not copies: each is a subclass of the base that only flips the flags read
by ``Method.contrastive_loss``, so the base's views, attack and loss code serve all four.
- ``-ip``: adversarial views are *inferior positives* (asymmetric stop-gradient α / 1−α, w).
- ``-hn``: adversarial views are *hard negatives* (HCL re-weighting with β, τ⁺).
- ``-iphn``: both.
- ``++`` (``--post pp``): the method as it is, then LP-AFT on K-means pseudo-labels before the
  finetuning schemes: ``bench.runs.plan`` carries it as the run's ``post`` option, and the run pretrains
  as the method itself, so a run of both shares one encoder.
This module only builds the classes; ``bench.methodkit.registry`` registers them at discovery and reads the
``++`` spellings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.choices import POST_STAGES
from bench.errors import ConfigError
from bench.methodkit.method import Method

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
