"""``bench study BASE VARIANT …``: add seeds until each method comparison is decided (issue 20 §4).

One seed answers "do these two trained classifiers differ?", which the next seed can overturn; the
question a user asks is "does the method differ?", with the seed as the unit
(``bench.products.method_level.compare_methods``). Its answer needs an unknown number of seeds, so the
study adds them in looks fixed in advance (``bench.products.sequential``: 3, 5, 7, 10 seeds by
default), with α spent over the looks so that stopping at the first decisive look keeps the
false-positive rate ≤ α. A comparison is one variant × scheme × attack against the base; α is split
equally over the comparisons (Bonferroni), so the whole study's family-wise error stays ≤ α.

Every look is a plan of seeds 0 … k−1 of the base and of the variants still undecided, run by the
ordinary pipeline (``bench.runs.plan.build_plan`` + ``bench.runs.pipeline.run_plan``, ``--jobs`` workers,
``resume`` on): a seed's run id is the one ``bench run --seeds`` gives for the same settings, so stored
seeds are reused for free (complete runs are skipped) and a killed study continues where it stopped
(rerun the same command: complete seeds are skipped, interrupted ones resume from their checkpoint).
The looks are replayed from the stored per-image records each time (the test is deterministic), so a
rerun reaches the same decisions and trains nothing a finished study already trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.errors import ConfigError
from bench.methodkit import registry
from bench.products import sequential
from bench.products.compare import load_records
from bench.products.method_level import compare_methods
from bench.products.sequential import Design, Look, make_design
from bench.runs.pipeline import RunOutcome, run_plan
from bench.runs.plan import RunPlan, RunRequest, build_plan
from bench.store.records import paired
from bench.store.results import ResultsStore

Runner = Callable[[RunPlan], list[RunOutcome]]


class StudyError(RuntimeError):
    """A run the study needs failed; the message names it and where its reason is recorded."""


@dataclass
class Track:
    """One comparison (variant × scheme × attack against the base) and its looks so far."""

    variant: str
    scheme: str
    attack: str
    looks: list[Look] = field(default_factory=list)

    @property
    def decision(self) -> str | None:
        return self.looks[-1].decision if self.looks else None

    @property
    def reason(self) -> str:
        return sequential.REASONS[self.decision] if self.decision else "in progress"

    @property
    def seeds(self) -> int:
        return self.looks[-1].seeds if self.looks else 0


@dataclass
class Study:
    """The study's settings and where each comparison stands (what ``study.md``/``study.csv`` show)."""

    base: str
    variants: tuple[str, ...]
    schemes: tuple[str, ...]
    attacks: tuple[str, ...]
    design: Design  # per comparison: its α is the study's α / the number of comparisons
    alpha: float  # the study's family-wise α
    tracks: list[Track]
    command: str = ""
    trained: list[str] = field(default_factory=list)  # run ids this invocation completed (not skipped)

    @property
    def finished(self) -> bool:
        return all(track.decision is not None for track in self.tracks)

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "variants": list(self.variants),
            "schemes": list(self.schemes),
            "attacks": list(self.attacks),
            "comparisons": len(self.tracks),
            "alpha": self.alpha,
            "design": self.design.to_dict(),
        }


def check_methods(base: str, variants: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Registered names, each once, no variant equal to the base (one line naming a bad one)."""
    for name in (base, *variants):
        if any(character in name for character in "*?[") or name == "all":
            raise ConfigError(f"method {name!r} is invalid for bench study: allowed registered names (no patterns)")
        registry.get(name)
    if not variants:
        raise ConfigError("variants=[] is invalid: allowed one or more method names after the base")
    for name in variants:
        if name == base or list(variants).count(name) > 1:
            raise ConfigError(
                f"variant {name!r} is invalid: allowed each variant once, none equal to the base {base!r}"
            )
    return base, tuple(variants)


def look_plan(request: RunRequest, methods: Sequence[str], seeds: int) -> RunPlan:
    """The plan of one look: seeds 0 … seeds−1 of ``methods``, as ``bench run --seeds`` would resolve it."""
    single = dataclasses.replace(
        request, methods=tuple(methods), seeds=tuple(str(seed) for seed in range(seeds)), resume=True
    )
    return build_plan(single)


def new_study(
    request: RunRequest,
    base: str,
    variants: Sequence[str],
    *,
    max_seeds: int = 10,
    first: int = 3,
    step: int = 2,
    alpha: float = 0.05,
    difference: float = 3.0,
) -> Study:
    """Check everything before any work: the design, the methods and the settings (by resolving the first
    look's plan, which ``--dry-run`` prints); each comparison gets α / (number of comparisons)."""
    make_design(max_seeds, first, step, alpha, difference)  # a bad setting fails first, naming itself
    if "seed" in request.overrides or request.seeds:
        raise ConfigError("--seed is invalid for bench study: allowed none (the study runs seeds 0, 1, … itself)")
    base, variants = check_methods(base, variants)
    first_look = look_plan(dataclasses.replace(request, dry_run=True), (base, *variants), first).base
    schemes, attacks = tuple(first_look.finetune.schemes), tuple(first_look.evaluate.attacks)
    if not schemes:
        raise ConfigError("--schemes='' is invalid for bench study: allowed one or more of SLF,ALF,AFF")
    if not attacks:
        raise ConfigError("--attacks='' is invalid for bench study: allowed one or more attacks, e.g. pgd20")
    tracks = [Track(variant, scheme, attack) for variant in variants for scheme in schemes for attack in attacks]
    design = make_design(max_seeds, first, step, alpha / len(tracks), difference)
    return Study(base, variants, schemes, attacks, design, alpha, tracks)


def seed_runs(plan: RunPlan) -> dict[tuple[str, int], str]:
    """(method, seed) → run id of a look's plan."""
    return {(run.method, run.config.seed): run.run_id for run in plan.runs}


def comparison_inputs(
    store: ResultsStore, runs: dict[tuple[str, int], str], track: Track, base: str, seeds: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per seed, the base's and the variant's per-image correctness on their common test images."""
    base_arrays, variant_arrays = [], []
    for seed in range(seeds):
        names = (runs[base, seed], runs[track.variant, seed])
        base_records, variant_records = (load_records(store.run(name), name) for name in names)
        for name, records in zip(names, (base_records, variant_records)):
            if track.scheme not in records:
                raise StudyError(f"run {name} has no {track.scheme} record: allowed only complete runs")
        try:
            _, base_correct, variant_correct = paired(
                base_records[track.scheme], variant_records[track.scheme], track.attack
            )
        except ValueError as error:
            raise StudyError(f"seed {seed}, {track.scheme}: {error}") from None
        base_arrays.append(base_correct)
        variant_arrays.append(variant_correct)
    return base_arrays, variant_arrays


def run_study(
    study: Study,
    request: RunRequest,
    runner: Runner = run_plan,
    compare: Callable[..., object] = compare_methods,
    after_look: Callable[[Study], None] | None = None,
) -> Study:
    """Look by look: run the seeds the undecided comparisons need (reused when stored), then test each at
    the look's level. ``after_look`` sees the study after every look (the report is rewritten there, so a
    killed study leaves one that says where it stood)."""
    design = study.design
    for index, (seeds, alpha) in enumerate(zip(design.looks, design.alphas)):
        open_tracks = [track for track in study.tracks if track.decision is None]
        if not open_tracks:
            break
        variants = [name for name in study.variants if any(track.variant == name for track in open_tracks)]
        plan = look_plan(request, (study.base, *variants), seeds)
        outcomes = runner(plan)
        failed = [outcome for outcome in outcomes if outcome.status == "failed"]
        if failed:
            first = failed[0]
            raise StudyError(
                f"run {first.run_id} ({first.method}) failed: {first.reason}; "
                f"{len(failed)} run(s) failed (bench status --results-dir {plan.results_dir}); rerun to resume"
            )
        study.trained += [outcome.run_id for outcome in outcomes if outcome.status == "completed"]
        store, runs = ResultsStore(plan.results_dir), seed_runs(plan)
        for track in open_tracks:
            base_arrays, variant_arrays = comparison_inputs(store, runs, track, study.base, seeds)
            comparison = compare(base_arrays, variant_arrays, alpha=alpha, confidence=1 - alpha)
            track.looks.append(sequential.look(design, index, comparison))
        if after_look is not None:
            after_look(study)
    return study
