"""``bench compare BASE VARIANT``: does the variant classify the test images differently from the base?

Issue 13 §1. Two runs evaluated on the same test images (``evaluate.subset_seed`` fixes the subset
for every method and seed) are compared *paired*, image by image, from the per-image records every
evaluation stores (``RunDir.correct``, bench.store.records). Per scheme both runs evaluated and per
attack both records hold, on the test indices both evaluated:

- the accuracy of each and the difference, variant − base, in points, with Newcombe's paired 95 %
  interval; the exact McNemar p-value and the verdict at α = 0.05 (bench.products.stats.compare_paired:
  "variant better" / "variant worse" / "no detectable difference");
- the minimum detectable difference (MDD): the smallest true difference the exact McNemar test
  finds with 80 % power at α = 0.05 on these n images, at the discordance observed here (the share
  of images on which exactly one of the two is correct; a plug-in estimate, so a planning figure,
  not a test). "No detectable difference" with an MDD of 9 points says little; with 1 point, much.

Both runs must have been evaluated at the same ε on the same evaluation dataset (their records'
``meta``); anything else is refused with one line, as is a run without records (evaluated before
they were stored: re-evaluate it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ConfigError
from bench.products.stats import ALPHA, Comparison, compare_paired, minimum_detectable_difference
from bench.store.records import Record, RecordError, paired, read_record
from bench.store.results import ResultsStore, RunDir

POWER = 0.8
MUST_MATCH = ("epsilon", "eval_dataset", "subset_seed")  # record meta that makes two evaluations comparable


class CompareError(ConfigError):
    """Two runs cannot be compared (a run or record is missing, or they were evaluated differently)."""


@dataclass(frozen=True)
class PairedResult:
    """One scheme × attack: the paired comparison, the observed discordance and the MDD (points)."""

    scheme: str
    attack: str
    comparison: Comparison
    discordant: float  # share of the n images on which exactly one of the two is correct
    detectable: float | None  # MDD in points; None when no difference up to the discordance is detectable


def find_run(name: str, results_dir: str | Path) -> RunDir:
    """A run by id (in ``results_dir/runs``) or by the path of its directory."""
    candidates = [ResultsStore(results_dir).run(name), RunDir(Path(name))]
    for run in candidates:
        if run.path.is_dir():
            return run
    raise CompareError(
        f"run={name!r} is invalid: allowed a run id in {ResultsStore(results_dir).runs} or a run directory"
    )


def load_records(run: RunDir, name: str) -> dict[str, Record]:
    """scheme → per-image record of one run; a run without any is one line saying why and what to do."""
    files = run.correct_files()
    if not files:
        raise CompareError(
            f"run {name!r} has no per-image records (correct_<scheme>.npz in {run.path}): "
            "it was evaluated before they were stored; re-evaluate it to compare it"
        )
    try:
        return {scheme: read_record(path) for scheme, path in files.items()}
    except RecordError as error:
        raise CompareError(str(error)) from None


def _chosen(kind: str, wanted: Sequence[str], available: Sequence[str], where: str) -> list[str]:
    if not available:
        raise CompareError(f"the two runs share no {kind}: {where}")
    for item in wanted:
        if item not in available:
            raise CompareError(f"{kind}={item!r} is invalid: allowed {sorted(available)} ({where})")
    return list(wanted) or sorted(available)


def _check_comparable(scheme: str, base: Record, variant: Record) -> None:
    for key in MUST_MATCH:
        if key in base.meta and key in variant.meta and base.meta[key] != variant.meta[key]:
            raise CompareError(
                f"{key} differs for {scheme}: base {base.meta[key]!r}, variant {variant.meta[key]!r}; "
                "allowed only evaluations of the same setting (paired on the same images)"
            )


def paired_result(scheme: str, attack: str, base: Record, variant: Record, alpha: float = ALPHA) -> PairedResult:
    """The paired comparison of one attack of two records, on their common test indices."""
    common, base_correct, variant_correct = paired(base, variant, attack)
    comparison = compare_paired(base_correct, variant_correct, alpha=alpha)
    discordant = float((base_correct != variant_correct).mean())
    detectable = minimum_detectable_difference(common.size, discordant, POWER, alpha) if discordant > 0 else None
    return PairedResult(scheme, attack, comparison, discordant, None if detectable is None else 100.0 * detectable)


def compare_runs(
    base: RunDir,
    variant: RunDir,
    schemes: Sequence[str] = (),
    attacks: Sequence[str] = (),
    names: tuple[str, str] = ("base", "variant"),
) -> list[PairedResult]:
    """Every requested (default: every shared) scheme × attack of two runs, compared paired."""
    base_records, variant_records = load_records(base, names[0]), load_records(variant, names[1])
    shared = [scheme for scheme in base_records if scheme in variant_records]
    where = f"{names[0]} has {sorted(base_records)}, {names[1]} has {sorted(variant_records)}"
    results = []
    for scheme in _chosen("scheme", schemes, shared, where):
        base_record, variant_record = base_records[scheme], variant_records[scheme]
        _check_comparable(scheme, base_record, variant_record)
        common = [attack for attack in base_record.correct if attack in variant_record.correct]
        where = (
            f"{scheme}: {names[0]} has {sorted(base_record.correct)}, {names[1]} has {sorted(variant_record.correct)}"
        )
        try:
            results += [
                paired_result(scheme, attack, base_record, variant_record)
                for attack in _chosen("attack", attacks, common, where)
            ]
        except ValueError as error:  # no common test index
            raise CompareError(f"{scheme}: {error}") from None
    return results


def format_results(results: Sequence[PairedResult], base: str, variant: str) -> str:
    """A Markdown table of the comparisons and a line on how to read it."""
    lines = [
        f"# {variant} vs {base} (paired on the same test images)",
        "",
        "| Scheme | Attack | n | Base % | Variant % | Δ (points) [95 % CI] | McNemar p | Verdict | MDD |",
        "|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for result in results:
        c = result.comparison
        detectable = "none" if result.detectable is None else f"{result.detectable:.1f}"
        lines.append(
            f"| {result.scheme} | {result.attack} | {c.n} | {c.base:.1f} | {c.variant:.1f} | "
            f"{c.difference:+.1f} [{c.low:+.1f}, {c.high:+.1f}] | {c.p_value:.3g} | {c.verdict} | "
            f"{detectable} |"
        )
    lines += [
        "",
        f"Δ = variant − base; interval: Newcombe paired (score); test: exact McNemar, α = {ALPHA}. "
        f"MDD: the smallest difference (points) the test detects with {POWER:.0%} power on these n images "
        "at the observed discordance (none: no image disagrees, or even a difference as large as the "
        "discordance is not detectable).",
    ]
    return "\n".join(lines) + "\n"
