"""Derive the A-InfoNCE variants (Yu et al., ECCV 2022) of any adversarial base method.

The variants are not copies: each is a subclass of the base that only flips the flags read
by ``Method.contrastive_loss``, so the base's views, attack and loss code serve all four.
- ``-ip``: adversarial views are *inferior positives* (asymmetric stop-gradient α / 1−α, w).
- ``-hn``: adversarial views are *hard negatives* (HCL re-weighting with β, τ⁺).
- ``-iphn``: both.
This module only builds the classes; ``bench.registry.derive_variants`` registers them.
"""

from __future__ import annotations

from bench.method import Method

VARIANTS = {
    "ip": (True, False, "adversarial views as inferior positives (asymmetric stop-gradient)"),
    "hn": (False, True, "adversarial views as hard negatives (HCL re-weighting)"),
    "iphn": (True, True, "inferior positives and hard negatives"),
}


def make_variant(base: type[Method], suffix: str) -> type[Method]:
    """A subclass of ``base`` with the A-InfoNCE flags of ``suffix`` set."""
    inferior, hard, summary = VARIANTS[suffix]
    note = f" [{base.variant_note}]" if getattr(base, "variant_note", "") else ""
    return type(
        f"{base.__name__}_{suffix.upper()}",
        (base,),
        {
            "__doc__": f"{base.name} with {summary} (A-InfoNCE).",
            "__module__": base.__module__,
            "description": f"{base.name.upper()} + A-InfoNCE: {summary}{note}",
            "inferior_positives": inferior,
            "hard_negatives": hard,
            "base_name": base.name,
        },
    )


def variant_names(base: type[Method]) -> dict[str, str]:
    """``{registered name: suffix}`` of the three variants of ``base`` (``<base>-ip``, ``-hn``, ``-iphn``)."""
    return {f"{base.name}-{suffix}": suffix for suffix in VARIANTS}
