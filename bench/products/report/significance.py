"""Does the variant help? Each variant cell against its base method's cell, at the level its seeds allow (issue 20).

A variant row (``acl-ip``, ``rocl-iphn``, ...; bench.methodkit.variants, ``common.VARIANT_SUFFIXES``) whose base
method (``acl``, ``rocl``) is a row of the same table gets, per (scheme, attack) where both have a value,
the comparison *the data can answer*, and says which question that is:

- both cells over the same ≥ 2 seeds: **does the method differ?** Seeds are the unit
  (bench.products.method_level): with the per-image records of every seed (``RunDir.correct``), the
  random-effects HKSJ test over the paired per-seed differences (``compare_methods``); without them,
  the paired t-test over the per-seed accuracies (``compare_method_means``, the same test with equal
  weights). Its verdict is a method verdict and gets the table's ``▲``/``▼``;
- both cells single runs whose per-image records are stored: **do these two trained classifiers
  differ?** The exact McNemar test on the test images both evaluated
  (bench.products.compare.paired_result). Its verdict is "classifiers differ", never "variant
  better": the next seed can overturn it. No mark; a method verdict needs seeds;
- otherwise (different seeds, one seed without records, a row of several configurations): none,
  and the cell carries no mark. A test over unpaired single numbers would be meaningless.

The CSV carries the level, difference, p-value and test of every defined comparison; Holm's
adjustment runs over all of a report's comparisons together.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.products.compare import paired_result
from bench.products.method_level import (
    DIFFERENCE_OF_INTEREST,
    POWER,
    MethodComparison,
    compare_method_means,
    compare_methods,
    seeds_for_power,
)
from bench.products.report.common import MISSING, VARIANT_SUFFIXES
from bench.products.report.tables import CLASSIFIER_LEVEL, Cell, Table, VersusBase
from bench.products.stats import ALPHA, holm_adjusted, minimum_detectable_difference
from bench.store.records import RecordError, paired, read_record
from bench.store.results import RunDir

BETTER, WORSE = "▲", "▼"
CLASSIFIERS_DIFFER = "classifiers differ"


def base_method(label: str, labels: set[str]) -> str | None:
    """The base method's row of a variant row of this table, or None (not a variant, or no base row)."""
    for suffix in sorted(VARIANT_SUFFIXES, key=len, reverse=True):
        if label.endswith(f"-{suffix}") and label[: -len(suffix) - 1] in labels:
            return label[: -len(suffix) - 1]
    return None


def method_level(k: int) -> str:
    return f"method ({k} seeds)"


def _seed_records(cell: Cell, seeds: list[str], scheme: str, runs_dir: Path) -> list:
    runs = dict(zip(cell.seeds, cell.runs))
    return [read_record(RunDir(runs_dir / runs[seed]).correct(scheme)) for seed in seeds]


def _method_versus_base(
    base_values: list[float], variant_values: list[float], result: MethodComparison, images: list[tuple[int, float]]
) -> VersusBase:
    """A method-level comparison as a report row; ``images``: (n, ψ) per seed when records were read."""
    n = min(size for size, _ in images) if images else None
    discordant = sum(share for _, share in images) / len(images) if images else None
    detectable = None
    if n and discordant:
        fraction = minimum_detectable_difference(n, discordant, POWER, ALPHA)
        detectable = None if fraction is None else 100.0 * fraction
    return VersusBase(
        method_level(result.seeds),
        result.seeds,
        n,
        sum(base_values) / len(base_values),
        sum(variant_values) / len(variant_values),
        result.difference,
        result.low,
        result.high,
        result.p_value,
        result.test,
        result.verdict,
        discordant,
        detectable,
        result.between_seed_sd,
        result.seeds_needed(DIFFERENCE_OF_INTEREST, POWER, ALPHA),
    )


def paired_over_seeds(
    base: Cell, variant: Cell, scheme: str = "", attack: str = "", runs_dir: Path | None = None
) -> VersusBase | None:
    """The method-level test over the seeds both cells have (at least 2), else None: from the per-image
    records of every shared seed when all are readable, else from the per-seed accuracies."""
    base_values, variant_values = dict(zip(base.seeds, base.values)), dict(zip(variant.seeds, variant.values))
    common = sorted(set(base_values) & set(variant_values))
    if len(common) < 2:
        return None
    base_list, variant_list = [base_values[seed] for seed in common], [variant_values[seed] for seed in common]
    if runs_dir is not None and len(base.runs) == base.n and len(variant.runs) == variant.n:
        try:
            pairs = [
                paired(base_record, variant_record, attack)
                for base_record, variant_record in zip(
                    _seed_records(base, common, scheme, runs_dir), _seed_records(variant, common, scheme, runs_dir)
                )
            ]
            result = compare_methods([b for _, b, _ in pairs], [v for _, _, v in pairs])
            images = [(int(b.size), float((b != v).mean())) for _, b, v in pairs]
            return _method_versus_base(base_list, variant_list, result, images)
        except (RecordError, ValueError):  # a seed without a record, or the attack or images are not shared
            pass
    return _method_versus_base(base_list, variant_list, compare_method_means(base_list, variant_list), [])


def paired_on_images(base: Cell, variant: Cell, scheme: str, attack: str, runs_dir: Path) -> VersusBase | None:
    """Exact McNemar on the per-image records of two single runs (classifier level), else None."""
    if base.n != 1 or variant.n != 1 or len(base.runs) != 1 or len(variant.runs) != 1:
        return None
    try:
        records = [read_record(RunDir(runs_dir / cell.runs[0]).correct(scheme)) for cell in (base, variant)]
        result = paired_result(scheme, attack, *records)
    except (RecordError, ValueError):  # no record, or the attack or the images are not shared
        return None
    c = result.comparison
    within_sd = math.sqrt(max(0.0, 1e4 * (result.discordant - (c.difference / 100) ** 2) / max(1, c.n - 1)))
    at_least = seeds_for_power(within_sd, DIFFERENCE_OF_INTEREST, POWER, ALPHA)
    return VersusBase(
        CLASSIFIER_LEVEL,
        1,
        c.n,
        c.base,
        c.variant,
        c.difference,
        c.low,
        c.high,
        c.p_value,
        c.test,
        CLASSIFIERS_DIFFER if c.p_value < ALPHA else "no detectable difference",
        result.discordant,
        result.detectable,
        seeds_needed_at_least=at_least,
    )


def compare_with_bases(table: Table, runs_dir: Path | None) -> dict[tuple[str, str, str], VersusBase]:
    """Every defined variant-vs-base comparison of a table, keyed by the variant cell."""
    labels = set(table.methods)
    out = {}
    for (label, scheme, attack), cell in table.cells.items():
        base_label = base_method(label, labels)
        base = table.cells.get((base_label, scheme, attack)) if base_label else None
        if base is None:
            continue
        comparison = paired_over_seeds(base, cell, scheme, attack, runs_dir)
        if comparison is None and runs_dir is not None:
            comparison = paired_on_images(base, cell, scheme, attack, runs_dir)
        if comparison is not None:
            out[(label, scheme, attack)] = comparison
    return out


def mark(comparison: VersusBase | None) -> str:
    """``▲`` / ``▼`` for a significant *method-level* difference, '' otherwise (a classifier-level one included)."""
    if comparison is None or not comparison.is_method_level:
        return ""
    return {"variant better": BETTER, "variant worse": WORSE}.get(comparison.verdict, "")


VARIANT_HELP_COLUMNS = (
    "table",
    "variant",
    "base",
    "scheme",
    "attack",
    "level",
    "seeds",
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
    "between_seed_sd",
    "seeds_needed",
    "seeds_needed_at_least",
)


def _rounded(value: float | None, digits: int = 4):
    return "" if value is None or math.isnan(value) else round(value, digits)


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
                "level": c.level,
                "seeds": c.seeds,
                "n": "" if c.n is None else c.n,
                "base_value": round(c.base, 4),
                "variant_value": round(c.variant, 4),
                "difference": round(c.difference, 4),
                "low": _rounded(c.low),
                "high": _rounded(c.high),
                "p_value": f"{c.p_value:.4g}",
                "p_holm": f"{p_holm:.4g}",
                "test": c.test,
                "verdict": c.verdict,
                "discordant": "" if c.discordant is None else round(100.0 * c.discordant, 2),
                "detectable": _rounded(c.detectable, 2),
                "between_seed_sd": _rounded(c.between_seed_sd, 2),
                "seeds_needed": "" if c.seeds_needed is None else c.seeds_needed,
                "seeds_needed_at_least": "" if c.seeds_needed_at_least is None else c.seeds_needed_at_least,
            }
        )
    return rows


def _number(value) -> str:
    return MISSING if value == "" else f"{value:.1f}"


def _interval(row: dict) -> str:
    if row["low"] == "":
        return f"{row['difference']:+.1f}"
    return f"{row['difference']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}]"


def _seeds_needed(row: dict) -> str:
    if row["seeds_needed"] != "":
        return str(row["seeds_needed"])
    if row["seeds"] >= 2:
        return "> 100"
    at_least = row["seeds_needed_at_least"]
    return "needs ≥ 2 seeds to estimate" + ("" if at_least == "" else f" (≥ {at_least} from image noise alone)")


def variant_help_markdown(rows: list[dict]) -> str:
    """'Does the variant help?': each comparison with the question it answers, its interval, p-value and verdict."""
    d = f"{DIFFERENCE_OF_INTEREST:g}"
    lines = [
        "# Does the variant help?",
        "",
        "Two questions, answered apart. **Level 'method (k seeds)'**: does the *method* differ? Seeds are the "
        "unit, each seed's per-image records nested in it: a random-effects meta-analysis over the paired "
        "per-seed differences with the Hartung-Knapp-Sidik-Jonkman variance and t(k − 1) (test "
        "hksj-random-effects; paired-t where the seeds have no per-image records). Only these verdicts are "
        "method verdicts, and only they give the tables' ▲/▼. **Level 'classifiers (one seed)'**: do these "
        "two *trained classifiers* differ? The exact McNemar test with Newcombe's paired interval on the "
        "images of one run each: its verdict 'classifiers differ' says nothing about the method, since "
        "another seed can overturn it; a method verdict needs ≥ 2 seeds of each (`bench run --seeds 0 1 2`), "
        "the default one-seed run gives none.",
        "",
        "Δ: variant − base accuracy (points), 95 % interval, p-value and verdict at α = 0.05; n: test images "
        "(per seed). The verdict is per comparison: with many of them, about one in twenty is 'significant' by "
        "chance when nothing differs. p (Holm) adjusts for all the comparisons of this report together "
        "(Holm's step-down): a difference holds after that correction where p (Holm) < 0.05.",
        "",
        "Power. ψ: the share of images the two classify differently (mean over seeds); MDD: the smallest "
        "difference (points) the exact McNemar test detects with 80 % power on one seed's n images at that ψ "
        "(–: none is): the image-level noise only. SD between seeds: √τ², the seed-to-seed spread of the "
        f"difference beyond the image noise. Seeds for {d} pts: the seeds of each method a method-level test "
        f"needs to detect a {d}-point difference with 80 % power at the observed per-seed SD √(τ² + v) (a "
        "planning figure: 2-3 seeds estimate that SD poorly); for one seed the spread between seeds is unknown, "
        "and the count from the image noise alone (τ = 0) is a lower bound. 'No detectable difference' with an "
        "MDD or a "
        "seed count above what you have means the comparison was too small to tell, not that the variant "
        "does not help.",
        "",
        "| Table | Variant | Base | Scheme | Attack | Level | n | Δ [95 % CI] | p | p (Holm) | Test | Verdict | "
        f"ψ % | MDD | SD between seeds | Seeds for {d} pts |",
        "|---|---|---|---|---|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['table']} | {r['variant']} | {r['base']} | {r['scheme']} | {r['attack']} | {r['level']} | "
        f"{r['n'] if r['n'] != '' else MISSING} | {_interval(r)} | {r['p_value']} | {r['p_holm']} | {r['test']} | "
        f"{r['verdict']} | {_number(r['discordant'])} | {_number(r['detectable'])} | "
        f"{_number(r['between_seed_sd'])} | {_seeds_needed(r)} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"
