"""``bench compare BASE VARIANT``: two trained classifiers (run ids), or two methods (method names) over seeds.

Two questions, named apart (issue 20 §1). With two **run ids**, the question is "do these two trained
classifiers differ?" (classifier level, below); another seed can overturn its answer, so its verdict
reads "classifiers differ", never "variant better". With two **method names**, the question is "does
the method differ?" (method level): every stored seed of each, in the one setting both were run in
(data, preset, protocol, epochs), paired by seed, tested over seeds with their per-image records
nested in them (bench.products.method_level.compare_methods). The output's first line names the level.

Classifier level (issue 13 §1). Two runs evaluated on the same test images (``evaluate.subset_seed`` fixes the subset
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

from bench.errors import ConfigError, did_you_mean
from bench.products.method_level import DIFFERENCE_OF_INTEREST, MethodComparison, compare_methods
from bench.products.stats import ALPHA, Comparison, compare_paired, minimum_detectable_difference
from bench.store.records import Record, RecordError, paired, read_record
from bench.store.results import ResultsStore, RunDir

POWER = 0.8
# Record meta that makes two evaluations comparable: the same images, the same attack (a smaller PGD step
# or fewer steps is a weaker attack), the same resolution. Records written before a key existed lack it.
MUST_MATCH = ("epsilon", "eval_dataset", "subset_seed", "step_size", "pgd_steps", "image_size")


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
    run = find_run_or_none(name, results_dir)
    if run is None:
        store = ResultsStore(results_dir)
        raise CompareError(
            f"run={name!r} is invalid: allowed a run id in {store.runs} ({store.near(name)}) or a run directory"
        )
    return run


def find_run_or_none(name: str, results_dir: str | Path) -> RunDir | None:
    for run in (ResultsStore(results_dir).run(name), RunDir(Path(name))):
        if run.path.is_dir():
            return run
    return None


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
            hint = did_you_mean(item, available)
            raise CompareError(f"{kind}={item!r} is invalid{hint}: allowed {sorted(available)} ({where})")
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


def classifier_verdict(comparison: Comparison) -> str:
    """'classifiers differ' where the exact McNemar test rejects: a statement about two trained classifiers."""
    return "classifiers differ" if comparison.p_value < ALPHA else "no detectable difference"


def format_results(results: Sequence[PairedResult], base: str, variant: str) -> str:
    """A Markdown table of the comparisons and a line on how to read it."""
    lines = [
        f"# Classifier level (one run each): do the trained classifiers {variant} and {base} differ? "
        "(paired on the same test images; not a method verdict: compare method names over seeds for that)",
        "",
        "| Scheme | Attack | n | Base % | Variant % | Δ (points) [95 % CI] | McNemar p | Verdict | MDD |",
        "|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for result in results:
        c = result.comparison
        detectable = "none" if result.detectable is None else f"{result.detectable:.1f}"
        lines.append(
            f"| {result.scheme} | {result.attack} | {c.n} | {c.base:.1f} | {c.variant:.1f} | "
            f"{c.difference:+.1f} [{c.low:+.1f}, {c.high:+.1f}] | {c.p_value:.3g} | {classifier_verdict(c)} | "
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


SETTING = ("dataset", "eval_dataset", "preset", "protocol", "pretrain_epochs", "finetune_epochs")


@dataclass(frozen=True)
class MethodResult:
    """One scheme × attack of two methods over their shared seeds (method level)."""

    scheme: str
    attack: str
    n: int  # test images per seed (the fewest of any seed's pair)
    base: float  # accuracy %, mean over the seeds
    variant: float
    comparison: MethodComparison


@dataclass(frozen=True)
class SeedPairs:
    """Two methods' runs in one setting, paired by seed: seed → (base run id, variant run id)."""

    setting: tuple
    runs: dict[int, tuple[str, str]]


def stored_methods(results_dir: str | Path) -> dict[str, dict[tuple, dict[int, str]]]:
    """method → setting → seed → run id, from ``results.csv`` (the latest run of a seed in a setting wins;
    rows without a seed cannot be paired and are left out)."""
    rows = sorted(ResultsStore(results_dir).read_rows(), key=lambda row: row.timestamp)
    out: dict[str, dict[tuple, dict[int, str]]] = {}
    for row in rows:
        if row.seed is not None:
            setting = tuple(getattr(row, column) for column in SETTING)
            out.setdefault(row.method, {}).setdefault(setting, {})[row.seed] = row.run_id
    return out


def pair_seeds(base: str, variant: str, methods: dict[str, dict[tuple, dict[int, str]]]) -> SeedPairs:
    """The one setting both methods were run in, and their runs there paired by seed."""
    shared = sorted(set(methods[base]) & set(methods[variant]), key=str)
    if len(shared) != 1:
        allowed = [dict(zip(SETTING, setting)) for setting in shared]
        raise CompareError(
            f"methods {base!r} and {variant!r} share {len(shared)} settings ({', '.join(SETTING)}): "
            f"allowed exactly one; compare run ids instead ({allowed or 'none shared'})"
        )
    base_runs, variant_runs = methods[base][shared[0]], methods[variant][shared[0]]
    seeds = sorted(set(base_runs) & set(variant_runs))
    if not seeds:
        raise CompareError(
            f"methods {base!r} (seeds {sorted(base_runs)}) and {variant!r} (seeds {sorted(variant_runs)}) "
            "share no seed: allowed methods run with the same seeds (bench run --seeds ...)"
        )
    return SeedPairs(shared[0], {seed: (base_runs[seed], variant_runs[seed]) for seed in seeds})


def compare_method_names(
    pairs: SeedPairs, results_dir: str | Path, schemes: Sequence[str] = (), attacks: Sequence[str] = ()
) -> list[MethodResult]:
    """Every requested (default: every shared) scheme × attack, tested over the paired seeds."""
    store = ResultsStore(results_dir)
    records = [
        (load_records(store.run(base_run), base_run), load_records(store.run(variant_run), variant_run))
        for base_run, variant_run in pairs.runs.values()
    ]
    shared = sorted(set.intersection(*(set(base) & set(variant) for base, variant in records)))
    results = []
    for scheme in _chosen("scheme", schemes, shared, "schemes every seed of both methods has records of"):
        seeds = [(base[scheme], variant[scheme]) for base, variant in records]
        for base_record, variant_record in seeds:
            _check_comparable(scheme, base_record, variant_record)
        common = sorted(set.intersection(*(set(b.correct) & set(v.correct) for b, v in seeds)))
        for attack in _chosen("attack", attacks, common, f"{scheme}: attacks every seed of both has"):
            try:
                arrays = [paired(base_record, variant_record, attack)[1:] for base_record, variant_record in seeds]
            except ValueError as error:  # no common test index
                raise CompareError(f"{scheme}: {error}") from None
            results.append(
                MethodResult(
                    scheme,
                    attack,
                    min(base.size for base, _ in arrays),
                    100.0 * sum(float(base.mean()) for base, _ in arrays) / len(arrays),
                    100.0 * sum(float(variant.mean()) for _, variant in arrays) / len(arrays),
                    compare_methods([base for base, _ in arrays], [variant for _, variant in arrays]),
                )
            )
    return results


def format_method_results(results: Sequence[MethodResult], base: str, variant: str, pairs: SeedPairs) -> str:
    """A Markdown table of the method-level comparisons, the seeds and runs behind them, and how to read it."""
    seeds = list(pairs.runs)
    d = f"{DIFFERENCE_OF_INTEREST:g}"
    lines = [
        f"# Method level ({len(seeds)} seeds): does the method {variant} differ from {base}? "
        f"(seeds {', '.join(map(str, seeds))}, paired by seed; per-image records nested in each seed)",
        "",
        "| Scheme | Attack | Seeds | n | Base % | Variant % | Δ (points) [95 % CI] | p | Verdict | "
        f"SD between seeds | Seeds for {d} pts |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for result in results:
        c = result.comparison
        interval = f"{c.difference:+.1f}" + ("" if c.seeds < 2 else f" [{c.low:+.1f}, {c.high:+.1f}]")
        needed = c.seeds_needed()
        lines.append(
            f"| {result.scheme} | {result.attack} | {c.seeds} | {result.n} | "
            f"{result.base:.1f} | {result.variant:.1f} | "
            f"{interval} | {'–' if c.seeds < 2 else f'{c.p_value:.3g}'} | {c.verdict} | "
            f"{'–' if c.seeds < 2 else f'{c.between_seed_sd:.1f}'} | "
            f"{'needs ≥ 2 seeds to estimate' if c.seeds < 2 else needed or '> 100'} |"
        )
    lines += [
        "",
        f"Δ = variant − base, weighted mean over seeds; test: random-effects meta-analysis of the per-seed "
        f"paired differences with the Hartung-Knapp-Sidik-Jonkman variance, t(seeds − 1), α = {ALPHA}. "
        f"Seeds for {d} pts: seeds of each method needed to detect a {d}-point difference with 80 % power at "
        "the observed per-seed SD (a planning figure). One seed: no method verdict.",
        "Runs (seed: base, variant): "
        + "; ".join(f"{seed}: {base_run}, {variant_run}" for seed, (base_run, variant_run) in pairs.runs.items()),
    ]
    return "\n".join(lines) + "\n"


def compare_command(
    base: str, variant: str, results_dir: str | Path, schemes: Sequence[str] = (), attacks: Sequence[str] = ()
) -> str:
    """``bench compare``'s text: run ids (or run directories) → classifier level; method names → method level."""
    runs = [find_run_or_none(name, results_dir) for name in (base, variant)]
    if all(run is not None for run in runs):
        return format_results(compare_runs(*runs, schemes, attacks, names=(base, variant)), base, variant)
    methods = stored_methods(results_dir)
    for name, run in zip((base, variant), runs):
        if run is None and name not in methods:
            store = ResultsStore(results_dir)
            raise CompareError(
                f"{name!r} is invalid{did_you_mean(name, methods)}: allowed a run id in {store.runs} "
                f"({store.near(name)}), a run directory, or a method with seeded results in {store.table}: "
                f"{sorted(methods)}"
            )
    if any(run is not None for run in runs):
        raise CompareError(
            f"base={base!r}, variant={variant!r} is invalid: allowed two run ids (classifier level) "
            "or two method names (method level), not one of each"
        )
    pairs = pair_seeds(base, variant, methods)
    return format_method_results(compare_method_names(pairs, results_dir, schemes, attacks), base, variant, pairs)
