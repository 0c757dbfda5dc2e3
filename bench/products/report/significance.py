"""Does the variant help? A paired test of each variant cell against its base method's cell (issue 13 §1).

A variant row (``acl-ip``, ``rocl-iphn``, ...; bench.methodkit.variants, ``common.VARIANT_SUFFIXES``) whose base
method (``acl``, ``rocl``) is a row of the same table gets, per (scheme, attack) where both have a value,
the paired test
*where one is defined*:

- both cells over the same ≥ 2 seeds: the paired t-test over seeds, seed i with seed i
  (bench.products.stats.paired_t);
- both cells single runs whose per-image records are stored (``RunDir.correct``): the exact
  McNemar test on the test images both evaluated (bench.products.compare.paired_result);
- otherwise (different seeds, one seed without records, a row of several configurations): none,
  and the cell carries no mark. A test over unpaired single numbers would be meaningless.

The table marks a significant difference at α = 0.05 (``▲`` variant better, ``▼`` variant worse)
and its CSV carries the difference, p-value and test of every defined comparison.
"""

from __future__ import annotations

from pathlib import Path

from bench.products.compare import paired_result
from bench.products.report.common import MISSING, VARIANT_SUFFIXES
from bench.products.report.tables import Cell, Table
from bench.products.stats import Comparison, holm_adjusted, paired_t
from bench.store.records import RecordError, read_record
from bench.store.results import RunDir

BETTER, WORSE = "▲", "▼"


def base_method(label: str, labels: set[str]) -> str | None:
    """The base method's row of a variant row of this table, or None (not a variant, or no base row)."""
    for suffix in sorted(VARIANT_SUFFIXES, key=len, reverse=True):
        if label.endswith(f"-{suffix}") and label[: -len(suffix) - 1] in labels:
            return label[: -len(suffix) - 1]
    return None


def paired_over_seeds(base: Cell, variant: Cell) -> Comparison | None:
    """The paired t-test over the seeds both cells have (at least 2), else None."""
    base_values, variant_values = dict(zip(base.seeds, base.values)), dict(zip(variant.seeds, variant.values))
    common = sorted(set(base_values) & set(variant_values))
    if len(common) < 2:
        return None
    return paired_t([base_values[seed] for seed in common], [variant_values[seed] for seed in common])


def paired_on_images(base: Cell, variant: Cell, scheme: str, attack: str, runs_dir: Path) -> Comparison | None:
    """Exact McNemar on the per-image records of two single runs, else None (no or unreadable record)."""
    if base.n != 1 or variant.n != 1 or len(base.runs) != 1 or len(variant.runs) != 1:
        return None
    try:
        records = [read_record(RunDir(runs_dir / cell.runs[0]).correct(scheme)) for cell in (base, variant)]
        return paired_result(scheme, attack, *records).comparison
    except (RecordError, ValueError):  # no record, or the attack or the images are not shared
        return None


def compare_with_bases(table: Table, runs_dir: Path | None) -> dict[tuple[str, str, str], Comparison]:
    """Every defined variant-vs-base comparison of a table, keyed by the variant cell."""
    labels = set(table.methods)
    out = {}
    for (label, scheme, attack), cell in table.cells.items():
        base_label = base_method(label, labels)
        base = table.cells.get((base_label, scheme, attack)) if base_label else None
        if base is None:
            continue
        comparison = paired_over_seeds(base, cell)
        if comparison is None and runs_dir is not None:
            comparison = paired_on_images(base, cell, scheme, attack, runs_dir)
        if comparison is not None:
            out[(label, scheme, attack)] = comparison
    return out


def mark(comparison: Comparison | None) -> str:
    """``▲`` / ``▼`` for a significant difference, '' otherwise."""
    if comparison is None:
        return ""
    return {"variant better": BETTER, "variant worse": WORSE}.get(comparison.verdict, "")


VARIANT_HELP_COLUMNS = (
    "table",
    "variant",
    "base",
    "scheme",
    "attack",
    "n",
    "base_value",
    "variant_value",
    "difference",
    "low",
    "high",
    "p_value",
    "p_holm",
    "test",
    "verdict",
    "discordant",
    "detectable",
)


def variant_help_rows(tables: list[Table]) -> list[dict]:
    """Every defined variant-vs-base comparison of the tables, one row each (the CSV's long form)."""
    found = [(table, key, c) for table in tables for key, c in sorted(table.versus_base.items())]
    adjusted = holm_adjusted([c.p_value for _, _, c in found])
    rows = []
    for (table, (label, scheme, attack), c), p_holm in zip(found, adjusted):
        rows.append(
            {
                "table": table.key.title(),
                "variant": label,
                "base": base_method(label, set(table.methods)),
                "scheme": scheme,
                "attack": attack,
                "n": c.n,
                "base_value": round(c.base, 4),
                "variant_value": round(c.variant, 4),
                "difference": round(c.difference, 4),
                "low": round(c.low, 4),
                "high": round(c.high, 4),
                "p_value": f"{c.p_value:.4g}",
                "p_holm": f"{p_holm:.4g}",
                "test": c.test,
                "verdict": c.verdict,
                "discordant": "" if c.discordant is None else round(100.0 * c.discordant, 2),
                "detectable": "" if (detectable := c.detectable()) is None else round(detectable, 2),
            }
        )
    return rows


def _number(value) -> str:
    return MISSING if value == "" else f"{value:.1f}"


def variant_help_markdown(rows: list[dict]) -> str:
    """'Does the variant help?': each comparison with its interval, p-value and verdict."""
    lines = [
        "# Does the variant help?",
        "",
        "Variant − base accuracy (points) on the same test images or seeds, 95 % interval, p-value and verdict "
        "at α = 0.05 (paired t-test over shared seeds, n = seeds; exact McNemar with Newcombe's paired "
        "interval on the per-image records of single runs, n = images). The verdict is per comparison: with "
        "many of them, about one in twenty is 'significant' by chance when nothing differs. p (Holm) adjusts "
        "for all the comparisons of this report together (Holm's step-down): a variant is better or worse "
        "after that correction where p (Holm) < 0.05.",
        "",
        "Power, for the paired tests on images: ψ is the share of images the two classifiers classify "
        "differently, and MDD the smallest difference (points) the exact McNemar test detects with 80 % power "
        "at that n and ψ (–: none is). 'No detectable difference' with an MDD above the difference you care "
        "about means the comparison was too small to tell, not that the variant does not help.",
        "",
        "| Table | Variant | Base | Scheme | Attack | n | Δ [95 % CI] | p | p (Holm) | Test | Verdict | ψ % | MDD |",
        "|---|---|---|---|---|---:|---|---:|---:|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['table']} | {r['variant']} | {r['base']} | {r['scheme']} | {r['attack']} | {r['n']} | "
        f"{r['difference']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] | {r['p_value']} | {r['p_holm']} | {r['test']} | "
        f"{r['verdict']} | {_number(r['discordant'])} | {_number(r['detectable'])} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"
