"""The method-level test (bench.products.method_level): the formulas by hand, and its level and power by simulation.

The simulations draw what `bench run --seeds ...` gives on the digits: per seed, each arm's accuracy is
0.40 plus a seed effect N(0, τ²) (τ = 2-4 points; also 0, where DerSimonian-Laird most often estimates
τ² = 0 and HKSJ's q < 1), and the two arms' per-image correctness on 359 images is a paired 2×2 table
with 30 % of the images discordant. Monte-Carlo error is bounded with the binomial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.products.method_level import (
    NEEDS_SEEDS,
    compare_method_means,
    compare_methods,
    power_over_seeds,
    seeds_for_power,
)

IMAGES = 359


def _seed(both: int, variant_only: int, base_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed's per-image correctness (base, variant) with the given paired 2×2 counts."""
    base = np.array([True] * both + [False] * variant_only + [True] * base_only + [False] * neither)
    variant = np.array([True] * both + [True] * variant_only + [False] * base_only + [False] * neither)
    return base, variant


def _by_hand(tables: list[tuple[int, int, int, int]]) -> tuple[float, float, float, float]:
    """DerSimonian-Laird τ² and the HKSJ interval and p, from the counts, in plain Python (points)."""
    d, v = [], []
    for both, variant_only, base_only, neither in tables:
        n = both + variant_only + base_only + neither
        mean = (variant_only - base_only) / n
        second = (variant_only + base_only) / n  # E[x²] of per-image differences x in {-1, 0, 1}
        d.append(100 * mean)
        v.append(1e4 * (second - mean * mean) * n / (n - 1) / n)
    k = len(d)
    w = [1 / x for x in v]
    fixed = sum(a * b for a, b in zip(w, d)) / sum(w)
    q = sum(a * (b - fixed) ** 2 for a, b in zip(w, d))
    tau2 = max(0.0, (q - (k - 1)) / (sum(w) - sum(a * a for a in w) / sum(w)))
    w = [1 / (x + tau2) for x in v]
    mean = sum(a * b for a, b in zip(w, d)) / sum(w)
    se = math.sqrt(sum(a * (b - mean) ** 2 for a, b in zip(w, d)) / (k - 1) / sum(w))
    half = scipy_stats.t.ppf(0.975, k - 1) * se
    return mean, tau2, half, 2 * scipy_stats.t.sf(abs(mean) / se, k - 1)


def test_dersimonian_laird_and_hksj_match_a_computation_by_hand():
    tables = [(150, 60, 30, 119), (140, 40, 45, 134), (160, 70, 20, 109), (150, 50, 50, 109)]
    comparison = compare_methods(*zip(*(_seed(*table) for table in tables)))
    mean, tau2, half, p_value = _by_hand(tables)
    assert tau2 > 0  # the example is heterogeneous: the random effect is exercised
    assert comparison.difference == pytest.approx(mean, rel=1e-12)
    assert comparison.between_seed_sd == pytest.approx(math.sqrt(tau2), rel=1e-10)
    assert (comparison.low, comparison.high) == pytest.approx((mean - half, mean + half), rel=1e-10)
    assert comparison.p_value == pytest.approx(p_value, rel=1e-10)
    assert comparison.seeds == 4 and comparison.verdict == "no detectable difference"


def test_equal_within_seed_variances_reduce_to_the_paired_t_test_over_seeds():
    # ±20 of 359 discordance with the same total: every seed has the same v_s, differences +, −, +, +
    tables = [(140, 30, 10, 179), (140, 10, 30, 179), (140, 30, 10, 179), (140, 30, 10, 179)]
    seeds = [_seed(*table) for table in tables]
    comparison = compare_methods([b for b, _ in seeds], [v for _, v in seeds])
    base_acc = [100 * b.mean() for b, _ in seeds]
    variant_acc = [100 * v.mean() for _, v in seeds]
    reference = scipy_stats.ttest_rel(variant_acc, base_acc)
    interval = reference.confidence_interval(0.95)
    assert comparison.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert (comparison.low, comparison.high) == pytest.approx((interval.low, interval.high), rel=1e-10)
    means = compare_method_means(base_acc, variant_acc)
    assert means.p_value == pytest.approx(reference.pvalue, rel=1e-10) and means.test == "paired-t"


def test_one_seed_gives_no_method_verdict():
    comparison = compare_methods([_seed(150, 60, 10, 139)[0]], [_seed(150, 60, 10, 139)[1]])
    assert comparison.verdict == NEEDS_SEEDS and comparison.seeds == 1
    assert math.isnan(comparison.p_value) and math.isnan(comparison.low) and comparison.seeds_needed() is None
    assert comparison.difference == pytest.approx(100 * 50 / 359)  # the one seed's difference, not a verdict
    assert compare_method_means([40.0], [45.0]).verdict == NEEDS_SEEDS


def test_bad_input_is_one_line_naming_it():
    with pytest.raises(ValueError, match="1 base and 2 variant seeds are invalid"):
        compare_methods([np.ones(5, bool)], [np.ones(5, bool)] * 2)
    with pytest.raises(ValueError, match=r"seed 0: shapes \(5,\) and \(4,\) are invalid"):
        compare_methods([np.ones(5, bool)], [np.ones(4, bool)])
    with pytest.raises(ValueError, match="difference=0 is invalid"):
        seeds_for_power(3.0, 0)


def test_seeds_for_power_matches_the_textbook_one_sample_t_test():
    # effect size 1 (δ = σ), two-sided α = 0.05, 80 %: 10 (power 0.803; 9 gives 0.759)
    assert seeds_for_power(2.0, 2.0) == 10
    assert power_over_seeds(2.0, 2.0, 10) == pytest.approx(0.8032, abs=5e-4)
    assert power_over_seeds(2.0, 2.0, 9) < 0.8
    assert seeds_for_power(20.0, 1.0, max_seeds=50) is None
    assert seeds_for_power(0.0, 1.0) == 2


def _simulate(generator, replicates: int, seeds: int, difference: float, tau: float = 3.0, discordant: float = 0.3):
    """Per-image correctness [replicates, seeds, images] of base and variant (see the module docstring)."""
    shape = (replicates, seeds, 1)
    p_base = 0.40 + tau / 100 * generator.standard_normal(shape)
    p_variant = 0.40 + difference / 100 + tau / 100 * generator.standard_normal(shape)
    variant_only = (discordant + (p_variant - p_base)) / 2
    base_only = (discordant - (p_variant - p_base)) / 2
    both = p_base - base_only
    draw = generator.random((replicates, seeds, IMAGES))
    base = draw < both + base_only  # categories in order: both, base only, variant only, neither
    variant = (draw < both) | ((draw >= both + base_only) & (draw < both + base_only + variant_only))
    return base, variant


def _rejections(base, variant) -> int:
    return sum(compare_methods(list(b), list(v)).p_value < 0.05 for b, v in zip(base, variant))


@pytest.mark.e2e
@pytest.mark.parametrize(("seeds", "tau"), [(3, 0.0), (3, 2.0), (3, 4.0), (5, 3.0)])
def test_false_positive_rate_is_at_most_alpha_on_null_data(seeds, tau):
    replicates = 2000
    base, variant = _simulate(np.random.default_rng(seeds), replicates, seeds, difference=0.0, tau=tau)
    rejected = _rejections(base, variant)
    # ≤ α within Monte-Carlo error: below the 99.9 % quantile of Binomial(2000, 0.05) (~130), and not degenerate
    assert rejected <= scipy_stats.binom.ppf(0.999, replicates, 0.05), rejected / replicates
    assert rejected >= 0.02 * replicates, rejected / replicates


@pytest.mark.e2e
def test_power_on_a_planted_effect_matches_the_planned_seeds():
    difference, tau, discordant = 4.0, 3.0, 0.3
    within = 1e4 * (discordant - (difference / 100) ** 2) / IMAGES  # image-level variance of one seed's d
    sd_per_seed = math.sqrt(2 * tau**2 + within)  # each arm has its own seed effect
    seeds = seeds_for_power(sd_per_seed, difference)
    claimed = power_over_seeds(sd_per_seed, difference, seeds)
    assert 5 <= seeds <= 30 and claimed >= 0.8
    replicates = 1500
    base, variant = _simulate(np.random.default_rng(7), replicates, seeds, difference, tau, discordant)
    empirical = _rejections(base, variant) / replicates
    error = math.sqrt(claimed * (1 - claimed) / replicates)
    assert abs(empirical - claimed) <= 4 * error, (seeds, claimed, empirical)
