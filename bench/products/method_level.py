"""Does the *method* differ? Seeds are the unit, each seed's per-image records nested in it (issue 20 §1-3).

Two questions must not be confused. "Do these two trained classifiers differ?" is answered by the
exact McNemar test on the images of one run each (bench.products.stats.compare_paired): its noise is
the test images only, and the next seed can overturn it, since a method's seed-to-seed spread (4-9
points on the digits) is larger than that test's minimum detectable difference. "Does the method
differ?" treats the training seed as the unit: a statement about what a new seed of each method
would give, on this test set.

The test: a random-effects meta-analysis over seeds of the paired per-seed differences, with the
Hartung-Knapp-Sidik-Jonkman (HKSJ) variance and a t distribution with k − 1 degrees of freedom
(Hartung & Knapp 2001, Stat. Med. 20:3875-3889; Sidik & Jonkman 2002, Stat. Med. 21:3153-3159).
IntHout, Ioannidis & Borm (2014, BMC Med. Res. Methodol. 14:25) show that HKSJ keeps its nominal
level with few studies where the DerSimonian-Laird z-test does not; ``tests/test_method_level.py``
checks the level and the power by simulation at 3 and 5 seeds. Per seed s (k seeds, n_s images):

- d_s = 100 · mean over images of (variant_correct − base_correct), points;
- v_s = 100² · var(per-image differences, ddof 1) / n_s: the image-level variance of d_s, so the
  image noise of each seed enters (floored at one image's worth, 100²/n_s², so that a seed whose
  two classifiers agree on every image does not get an infinite weight);
- τ² (between-seed variance) by DerSimonian & Laird's (1986) method of moments;
- w_s = 1 / (v_s + τ²); d = Σ w_s d_s / Σ w_s;
- HKSJ: q = Σ w_s (d_s − d)² / (k − 1), SE = √(q / Σ w_s); interval d ± t_{k−1} SE, p from t = d / SE.

We keep q as it is, not the ad hoc max(1, q) of Röver, Knapp & Friede (2015, BMC Med. Res. Methodol.
15:99), which guards against q < 1 when studies differ much in size: the seeds of a comparison are
evaluated on the same images, so their v_s are alike, and the simulation (τ = 0 included, where q < 1
is most frequent) shows the plain version at its level; the modification would also break the
identity with the paired t-test below. With equal v_s the weights are equal and this is exactly the
paired t-test over seeds on the per-seed accuracies; with per-seed accuracies only (no records) that
is what ``compare_method_means`` runs.
One seed gives no method verdict ("needs seeds"), never a p-value that reads as one.

Seed power (``seeds_for_power``): the smallest k at which a two-sided one-sample t-test over k
per-seed differences of SD σ = √(τ² + v) detects a true difference δ with the asked power (exact,
from the noncentral t). It plugs in the observed σ, which 2-3 seeds estimate poorly: a planning
figure, not a promise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from bench.products.stats import ALPHA, CONFIDENCE, _as_bool, _check_confidence, verdict

NEEDS_SEEDS = "needs seeds"
DIFFERENCE_OF_INTEREST = 3.0  # points: the default d of "seeds needed to detect d with 80 % power"
POWER = 0.8


@dataclass(frozen=True)
class MethodComparison:
    """Variant − base at the method level (seeds as the unit), in points."""

    difference: float  # variant - base, points, weighted mean over seeds
    low: float  # confidence interval, points (nan when k < 2)
    high: float
    p_value: float  # two-sided (nan when k < 2)
    seeds: int  # k
    between_seed_sd: float  # sqrt(tau^2), points (nan when k < 2, or without per-image records)
    within_seed_se: float  # typical image-level SE of one seed's difference, points (nan without records)
    verdict: str  # "variant better" | "variant worse" | "no detectable difference" | "needs seeds"
    per_seed_sd: float = math.nan  # SD of one seed's difference, sqrt(tau^2 + v), points: what power uses
    test: str = "hksj-random-effects"

    def seeds_needed(
        self, difference: float = DIFFERENCE_OF_INTEREST, power: float = POWER, alpha: float = ALPHA
    ) -> int | None:
        """Seeds per arm to detect ``difference`` points with ``power`` at the observed per-seed SD
        (None when unknown, i.e. under 2 seeds, or when more than 100 would be needed)."""
        if self.seeds < 2 or math.isnan(self.per_seed_sd):
            return None
        return seeds_for_power(self.per_seed_sd, difference, power, alpha)


def seed_differences(base: Sequence[np.ndarray], variant: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: (d_s, v_s) in points and points², from the paired per-image correctness of each seed."""
    if len(base) != len(variant) or len(base) == 0:
        raise ValueError(
            f"{len(base)} base and {len(variant)} variant seeds are invalid: allowed equal, non-zero numbers of seeds"
        )
    differences, variances = [], []
    for index, (base_s, variant_s) in enumerate(zip(base, variant)):
        base_s, variant_s = _as_bool(f"base[{index}]", base_s), _as_bool(f"variant[{index}]", variant_s)
        if base_s.shape != variant_s.shape or base_s.size < 2:
            raise ValueError(
                f"seed {index}: shapes {base_s.shape} and {variant_s.shape} are invalid: allowed equal, >= 2 images"
            )
        per_image = variant_s.astype(np.float64) - base_s.astype(np.float64)
        n = per_image.size
        differences.append(100.0 * per_image.mean())
        variances.append(max(1e4 * per_image.var(ddof=1) / n, 1e4 / (n * n)))
    return np.asarray(differences), np.asarray(variances)


def dersimonian_laird(differences: np.ndarray, variances: np.ndarray) -> float:
    """τ², the between-seed variance, by DerSimonian & Laird's method of moments (0 when Q ≤ k − 1)."""
    weights = 1.0 / variances
    pooled = float(np.sum(weights * differences) / np.sum(weights))
    q = float(np.sum(weights * (differences - pooled) ** 2))
    c = float(np.sum(weights) - np.sum(weights**2) / np.sum(weights))
    return max(0.0, (q - (len(differences) - 1)) / c) if c > 0 else 0.0


def _hksj(differences: np.ndarray, weights: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Weighted mean, interval and p-value with the HKSJ variance and t(k − 1)."""
    k = differences.size
    mean = float(np.sum(weights * differences) / np.sum(weights))
    q = float(np.sum(weights * (differences - mean) ** 2)) / (k - 1)
    standard_error = math.sqrt(q / float(np.sum(weights)))
    if standard_error <= 1e-12 * max(1.0, abs(mean)):  # identical differences: t is ±∞ (or 0/0 when all zero)
        return mean, mean, mean, (1.0 if mean == 0.0 else 0.0)
    p_value = float(2 * scipy_stats.t.sf(abs(mean) / standard_error, k - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, k - 1)) * standard_error
    return mean, mean - half, mean + half, p_value


def compare_methods(
    base: Sequence[np.ndarray], variant: Sequence[np.ndarray], alpha: float = ALPHA, confidence: float = CONFIDENCE
) -> MethodComparison:
    """base[s], variant[s]: per-image correctness (bool arrays, same images in the same order) of seed s."""
    _check_confidence(confidence)
    verdict(0.0, 1.0, alpha)  # validates alpha
    differences, variances = seed_differences(base, variant)
    within = math.sqrt(float(np.mean(variances)))
    if differences.size < 2:
        nan = math.nan
        return MethodComparison(float(differences[0]), nan, nan, nan, 1, nan, within, NEEDS_SEEDS)
    tau2 = dersimonian_laird(differences, variances)
    mean, low, high, p_value = _hksj(differences, 1.0 / (variances + tau2), confidence)
    return MethodComparison(
        mean,
        low,
        high,
        p_value,
        int(differences.size),
        math.sqrt(tau2),
        within,
        verdict(mean, p_value, alpha),
        math.sqrt(tau2 + float(np.mean(variances))),
    )


def compare_method_means(
    base_values: Sequence[float], variant_values: Sequence[float], alpha: float = ALPHA, confidence: float = CONFIDENCE
) -> MethodComparison:
    """The method-level test from per-seed accuracies (%) alone, seed i with seed i: without per-image records
    the image-level variances are unknown, so the weights are equal and HKSJ is the paired t-test over seeds;
    τ² cannot be told apart from image noise (between_seed_sd and within_seed_se are nan)."""
    base, variant = np.asarray(base_values, dtype=np.float64), np.asarray(variant_values, dtype=np.float64)
    if base.shape != variant.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(
            f"{base.size} base and {variant.size} variant seeds are invalid: allowed two equal-length, non-empty lists"
        )
    _check_confidence(confidence)
    verdict(0.0, 1.0, alpha)
    differences, nan = variant - base, math.nan
    if differences.size < 2:
        return MethodComparison(float(differences[0]), nan, nan, nan, 1, nan, nan, NEEDS_SEEDS, test="paired-t")
    mean, low, high, p_value = _hksj(differences, np.ones_like(differences), confidence)
    sd = float(differences.std(ddof=1))
    return MethodComparison(
        mean, low, high, p_value, int(differences.size), nan, nan, verdict(mean, p_value, alpha), sd, "paired-t"
    )


def power_over_seeds(sd_per_seed: float, difference: float, seeds: int, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided one-sample t-test over ``seeds`` per-seed differences of SD ``sd_per_seed``
    when the true difference is ``difference`` (points): P(|T| > t_crit), T noncentral t(k − 1, δ√k / σ)."""
    if seeds < 2:
        raise ValueError(f"seeds={seeds!r} is invalid: allowed >= 2")
    if not sd_per_seed >= 0 or not math.isfinite(sd_per_seed):
        raise ValueError(f"sd_per_seed={sd_per_seed!r} is invalid: allowed a finite value >= 0")
    if sd_per_seed == 0:
        return 1.0 if difference != 0 else alpha
    df = seeds - 1
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    noncentrality = difference * math.sqrt(seeds) / sd_per_seed
    return float(scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality))


def seeds_for_power(
    sd_per_seed: float, difference: float, power: float = POWER, alpha: float = ALPHA, max_seeds: int = 100
) -> int | None:
    """Smallest k with power >= `power` for a two-sided one-sample t-test over k per-seed differences
    with SD `sd_per_seed` (points; total per-seed SD = sqrt(tau^2 + v)), via the noncentral t; None if > max_seeds."""
    if not difference > 0:
        raise ValueError(f"difference={difference!r} is invalid: allowed a positive number of points")
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise ValueError(f"power={power!r}, alpha={alpha!r} is invalid: allowed values strictly between 0 and 1")
    if max_seeds < 2:
        raise ValueError(f"max_seeds={max_seeds!r} is invalid: allowed >= 2")
    for seeds in range(2, max_seeds + 1):  # power grows with k: the first k that reaches it
        if power_over_seeds(sd_per_seed, difference, seeds, alpha) >= power:
            return seeds
    return None
