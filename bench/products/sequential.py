"""The stopping rule of ``bench study``: add seeds in looks until a method comparison is decided.

Looking at a comparison after every new seed and stopping at the first "significant" interval
inflates the false-positive rate far above α (each look is another chance). The study therefore
fixes its looks in advance (``Design.looks``: e.g. 3, 5, 7, 10 seeds) and spends α over them with
the Lan-DeMets O'Brien-Fleming-type spending function

    α(t) = 2 − 2 Φ(z_{1−α/2} / √t),   t = seeds / max_seeds (the information fraction),

(Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials", Biometrika 70:659-663).
Look j tests at its increment α_j = α(t_j) − α(t_{j−1}); the increments sum to α(1) = α. Each
look's interval is the method-level interval (seeds as the unit) at confidence 1 − α_j, so under
the null each look wrongly excludes 0 with probability ≤ α_j and, by the union (Bonferroni) bound,
the whole study does so with probability ≤ Σ α_j = α, *whatever the correlation between looks*.
That is conservative: a classical group-sequential boundary uses the looks' correlation to spend
less of α at the end (we keep the union bound because the method-level test is not a z-statistic
with independent increments, so its looks' correlation is not known in closed form). O'Brien-Fleming
spending keeps early looks strict (3 seeds decide only a very large difference) and leaves most
of α to the last look.

A comparison stops at a look when

- its interval excludes 0: decided, "variant better" / "variant worse" (the error controlled above);
- its interval lies inside ±``difference`` (the smallest difference of interest): decided, "no
  difference that matters". Stopping here can only remove later rejections, so it never raises the
  type-I error; the interval at level 1 − α_j inside the band is at least as strict as a
  two-one-sided-tests equivalence claim at level α_j;
- the seed budget is spent (the last look): "undecided".

``promised_power`` is the design's promise on a planted effect, checked by simulation in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy import stats as scipy_stats

from bench.errors import ConfigError

BETTER, WORSE, EQUIVALENT, UNDECIDED = "variant better", "variant worse", "no difference that matters", "undecided"
REASONS = {
    BETTER: "interval excludes 0",
    WORSE: "interval excludes 0",
    EQUIVALENT: "interval inside ±difference",
    UNDECIDED: "seed budget spent",
}
MIN_SEEDS = 2  # a between-seed spread needs two seeds


@dataclass(frozen=True)
class Design:
    """The looks (seed counts), the α spent at each, and the smallest difference of interest (points)."""

    looks: tuple[int, ...]
    alphas: tuple[float, ...]  # α_j spent at look j; sums to ``alpha``
    alpha: float
    difference: float

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    def to_dict(self) -> dict:
        return {
            "looks": list(self.looks),
            "alpha_per_look": [round(value, 8) for value in self.alphas],
            "alpha": self.alpha,
            "difference": self.difference,
            "spending": "Lan-DeMets O'Brien-Fleming-type, Bonferroni across looks",
        }


def spent(alpha: float, fraction: float) -> float:
    """α(t) of the O'Brien-Fleming-type spending function: the α used up to information fraction t."""
    if fraction <= 0:
        return 0.0
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    return float(2 - 2 * scipy_stats.norm.cdf(z / math.sqrt(min(fraction, 1.0))))


def schedule(first: int, step: int, max_seeds: int) -> tuple[int, ...]:
    """Seed counts of the looks: ``first``, then every ``step`` seeds, ending at ``max_seeds`` (a last gap
    shorter than ``step`` is merged into the one before, so no look adds a single stray seed)."""
    looks = [first]
    while looks[-1] + 2 * step <= max_seeds:
        looks.append(looks[-1] + step)
    if looks[-1] != max_seeds:
        looks.append(max_seeds)
    return tuple(looks)


def make_design(
    max_seeds: int = 10, first: int = 3, step: int = 2, alpha: float = 0.05, difference: float = 3.0
) -> Design:
    """Check the study's settings (one line naming a bad value) and spend α over its looks."""
    if not isinstance(first, int) or first < MIN_SEEDS:
        raise ConfigError(f"--first-seeds={first!r} is invalid: allowed integers >= {MIN_SEEDS}")
    if not isinstance(max_seeds, int) or max_seeds < first:
        raise ConfigError(f"--max-seeds={max_seeds!r} is invalid: allowed integers >= --first-seeds ({first})")
    if not isinstance(step, int) or step < 1:
        raise ConfigError(f"--seeds-per-look={step!r} is invalid: allowed integers >= 1")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha={alpha!r} is invalid: allowed values strictly between 0 and 1")
    if not (difference > 0 and math.isfinite(difference)):
        raise ConfigError(f"--difference={difference!r} is invalid: allowed a finite number of points > 0")
    looks = schedule(first, step, max_seeds)
    cumulative = [spent(alpha, seeds / max_seeds) for seeds in looks]
    alphas = tuple(now - before for before, now in zip([0.0, *cumulative[:-1]], cumulative))
    return Design(looks, alphas, alpha, difference)


def decide(low: float, high: float, difference: float, last: bool) -> str | None:
    """The decision at one look from its interval (points, variant − base); None: add seeds."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNDECIDED if last else None
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    if -difference < low and high < difference:
        return EQUIVALENT
    return UNDECIDED if last else None


@dataclass(frozen=True)
class Look:
    """One look of one comparison: what it saw and what it decided (None: continue)."""

    seeds: int
    alpha: float
    difference: float
    low: float
    high: float
    p_value: float
    between_seed_sd: float
    decision: str | None


def run(design: Design, compare_at: Callable[[int, float], object]) -> list[Look]:
    """The looks of one comparison until it stops. ``compare_at(seeds, alpha)`` returns the method-level
    comparison of the first ``seeds`` seeds with its interval at confidence 1 − alpha (``difference``,
    ``low``, ``high``, ``p_value``, ``between_seed_sd``). The study interleaves these looks with training;
    this loop is the same rule for the simulation tests and ``replay``."""
    history: list[Look] = []
    for index, (seeds, alpha) in enumerate(zip(design.looks, design.alphas)):
        history.append(look(design, index, compare_at(seeds, alpha)))
        if history[-1].decision is not None:
            break
    return history


def look(design: Design, index: int, comparison) -> Look:
    """Look ``index`` of the design on one method-level comparison."""
    last = index == len(design.looks) - 1
    return Look(
        design.looks[index],
        design.alphas[index],
        float(comparison.difference),
        float(comparison.low),
        float(comparison.high),
        float(comparison.p_value),
        float(comparison.between_seed_sd),
        decide(float(comparison.low), float(comparison.high), design.difference, last),
    )


def promised_power(design: Design, effect: float, sd: float) -> float:
    """A lower bound on P(decide "variant better") when the per-seed differences are N(effect, sd²) and
    each look's interval is the paired t-interval over seeds (what a calibrated method-level test
    reduces to when image noise is folded into the seed's spread).

    P(better) ≥ P(the last look's t-test rejects upwards) − Σ_{earlier looks} P(mean < difference):
    the study decides "better" whenever the last look would, unless it stopped earlier for
    "worse" or "no difference that matters", and both need the look's mean below ``difference``
    (exactly normal: Φ((difference − effect)·√k / sd)). Looks that reject early only add to it."""
    if sd <= 0 or effect <= 0:
        raise ValueError(f"effect={effect!r}, sd={sd!r} is invalid: allowed effect > 0 and sd > 0")
    last, alpha = design.looks[-1], design.alphas[-1]
    critical = scipy_stats.t.ppf(1 - alpha / 2, last - 1)
    final = float(scipy_stats.nct.sf(critical, last - 1, effect * math.sqrt(last) / sd))
    early = sum(scipy_stats.norm.cdf((design.difference - effect) * math.sqrt(k) / sd) for k in design.looks[:-1])
    early = float(early)
    return max(0.0, final - early)
