"""Intervals and paired tests against published values; each expected number names its source."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.products.stats import (
    compare_paired,
    describe_power,
    format_interval,
    hierarchical_bootstrap,
    holm_adjusted,
    mcnemar_exact,
    mcnemar_power,
    minimum_detectable_difference,
    newcombe_paired_interval,
    paired_t,
    seed_summary,
    verdict,
    wilson_interval,
)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Stat. Med. 17:857-872, Table II, method 3 (Wilson score, no continuity correction).
NEWCOMBE_1998_WILSON = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0000, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_1998_WILSON)
def test_wilson_interval_matches_newcombe_1998(counts, expected):
    interval = wilson_interval(*counts)
    assert interval.low == pytest.approx(100 * expected[0], abs=0.006)
    assert interval.high == pytest.approx(100 * expected[1], abs=0.006)
    assert interval.estimate == pytest.approx(100 * counts[0] / counts[1])


def test_wilson_interval_stays_in_range_and_rejects_bad_counts():
    assert wilson_interval(20, 20).high == 100.0 and wilson_interval(0, 20).low == 0.0
    with pytest.raises(ValueError, match="k=5, n=4 is invalid"):
        wilson_interval(5, 4)


def test_t_quantiles_of_the_seed_interval_match_the_table():
    # NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2 (critical values of Student's t),
    # upper 0.025 point: df 2 → 4.303, df 4 → 2.776, df 9 → 2.262.
    for df, quantile in ((2, 4.303), (4, 2.776), (9, 2.262)):
        values = [0.0] * df + [float(df + 1)]  # mean 1, sample std sqrt(df + 1)
        summary = seed_summary(values)
        half = summary.high - summary.mean
        assert summary.mean == pytest.approx(1.0)
        assert summary.std == pytest.approx(math.sqrt(df + 1))
        assert half / (summary.std / math.sqrt(df + 1)) == pytest.approx(quantile, abs=5e-4)


def test_one_seed_has_no_interval():
    summary = seed_summary([42.0])
    assert summary.mean == 42.0 and math.isnan(summary.std) and math.isnan(summary.low)
    assert format_interval(summary.mean, summary.low, summary.high) == "42.0"


# Student (1908) / Cushny & Peebles sleep data, as in R's `datasets::sleep`; R's documented
# `t.test(extra ~ group, data = sleep, paired = TRUE)`: t = -4.0621, df = 9, p-value = 0.002833,
# 95 % CI -2.4598858 to -0.7001142, mean difference -1.58 (group 1 − group 2).
SLEEP_GROUP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_GROUP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_over_seeds_matches_r_sleep_example():
    comparison = paired_t(base_values=SLEEP_GROUP_2, variant_values=SLEEP_GROUP_1)  # variant − base = 1 − 2
    assert comparison.difference == pytest.approx(-1.58)
    assert comparison.p_value == pytest.approx(0.002833, abs=5e-7)
    assert comparison.low == pytest.approx(-2.4598858, abs=1e-6)
    assert comparison.high == pytest.approx(-0.7001142, abs=1e-6)
    assert comparison.verdict == "variant worse" and comparison.n == 10


def test_paired_t_with_identical_differences():
    assert paired_t([50.0, 60.0], [50.0, 60.0]).verdict == "no detectable difference"
    assert paired_t([50.0, 60.0], [52.0, 62.0]).verdict == "variant better"


def test_mcnemar_exact_matches_fagerland_2013():
    # Fagerland, Lydersen & Laake (2013), BMC Med. Res. Methodol. 13:91, Bentur et al. data
    # (discordant 1 and 7 of 21 pairs): McNemar exact conditional p = 0.070.
    assert mcnemar_exact(1, 7) == pytest.approx(0.070, abs=5e-4)
    assert mcnemar_exact(7, 1) == mcnemar_exact(1, 7)
    # By hand: 2 · (C(8,0) + C(8,1)) / 2^8 = 18/256.
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256, rel=1e-12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0


def test_newcombe_paired_interval_matches_fagerland_2017():
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, ch. 8, Cavo et al.
    # (2012) table [[59, 6], [16, 80]]: Newcombe square-and-add estimate -0.0621, 95 % CI -0.1186 to
    # -0.0046 (also asserted in ocbe-uio/contingencytables tests/testthat/test-ch8.R).
    interval = newcombe_paired_interval(59, 6, 16, 80)
    assert interval.estimate == pytest.approx(-6.21, abs=0.005)
    assert interval.low == pytest.approx(-11.86, abs=0.005)
    assert interval.high == pytest.approx(-0.46, abs=0.005)


def _paired_arrays(both: int, variant_only: int, base_only: int, neither: int):
    base = np.array([True] * both + [False] * variant_only + [True] * base_only + [False] * neither)
    variant = np.array([True] * both + [True] * variant_only + [False] * base_only + [False] * neither)
    order = np.random.default_rng(0).permutation(base.size)  # the order of images must not matter
    return base[order], variant[order]


def test_compare_paired_on_per_image_correctness():
    base, variant = _paired_arrays(59, 6, 16, 80)
    comparison = compare_paired(base, variant)
    assert comparison.base == pytest.approx(100 * 75 / 161) and comparison.variant == pytest.approx(100 * 65 / 161)
    assert (comparison.low, comparison.high) == pytest.approx((-11.86, -0.46), abs=0.005)
    # exact two-sided binomial test of 6 of 22 at 1/2, computed here from binomial coefficients
    assert comparison.p_value == pytest.approx(2 * sum(math.comb(22, k) for k in range(7)) / 2**22)
    # p = 0.0525: the exact test does not reject although Newcombe's interval excludes 0 (the two
    # procedures differ at the margin; the verdict follows the conservative test)
    assert comparison.p_value == pytest.approx(0.0525, abs=1e-4)
    assert comparison.verdict == "no detectable difference"
    assert compare_paired(*_paired_arrays(59, 4, 18, 80)).verdict == "variant worse"
    assert compare_paired(*_paired_arrays(59, 18, 4, 80)).verdict == "variant better"
    with pytest.raises(ValueError, match="1-D boolean"):
        compare_paired(base.astype(int), variant)


def test_verdict_texts():
    assert verdict(2.0, 0.01) == "variant better"
    assert verdict(-2.0, 0.01) == "variant worse"
    assert verdict(5.0, 0.2) == "no detectable difference"
    assert verdict(5.0, 0.04, alpha=0.01) == "no detectable difference"


def test_hierarchical_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(1)
    base = [rng.random(400) < 0.6 for _ in range(3)]
    variant = [b ^ (rng.random(400) < 0.1) for b in base]
    first = hierarchical_bootstrap(base, variant, n_boot=2000, seed=5)
    assert first == hierarchical_bootstrap(base, variant, n_boot=2000, seed=5)
    assert first != hierarchical_bootstrap(base, variant, n_boot=2000, seed=6)
    expected = np.mean([100 * (v.mean() - b.mean()) for b, v in zip(base, variant)])
    assert first.estimate == pytest.approx(expected) and first.low < first.estimate < first.high
    same = hierarchical_bootstrap(base, base, n_boot=200)
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0)


def test_hierarchical_bootstrap_with_one_seed_agrees_with_newcombe():
    base, variant = _paired_arrays(700, 90, 60, 150)  # n = 1000, +3 points
    bootstrap = hierarchical_bootstrap([base], [variant], n_boot=20000, seed=0)
    newcombe = compare_paired(base, variant)
    assert bootstrap.low == pytest.approx(newcombe.low, abs=0.4)
    assert bootstrap.high == pytest.approx(newcombe.high, abs=0.4)


def test_hierarchical_bootstrap_widens_with_seed_to_seed_spread():
    rng = np.random.default_rng(2)
    base = [rng.random(500) < 0.5 for _ in range(4)]
    steady = [b ^ (rng.random(500) < 0.04) for b in base]
    # a variant whose effect swings by seed: +6 points on two seeds, −6 on the others
    swinging = []
    for index, b in enumerate(base):
        v = b.copy()
        target = ~b if index % 2 == 0 else b
        v[np.flatnonzero(target)[:30]] = index % 2 == 0
        swinging.append(v)
    narrow = hierarchical_bootstrap(base, steady, seed=0)
    wide = hierarchical_bootstrap(base, swinging, seed=0)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def _simulated_power(n: int, difference: float, discordant: float, trials: int, seed: int) -> float:
    """Monte Carlo power with scipy's binomtest (an implementation independent of bench.products.stats)."""
    rng = np.random.default_rng(seed)
    probabilities = [(discordant + difference) / 2, (discordant - difference) / 2, 1 - discordant]
    draws = rng.multinomial(n, probabilities, size=trials)[:, :2]
    tables, counts = np.unique(draws, axis=0, return_counts=True)
    rejected = sum(
        int(count)
        for (better, worse), count in zip(tables, counts)
        if better + worse and scipy_stats.binomtest(int(better), int(better + worse), 0.5).pvalue < 0.05
    )
    return rejected / trials


@pytest.mark.e2e
@pytest.mark.parametrize(("n", "difference", "discordant"), [(64, 0.1, 0.2), (500, 0.04, 0.1), (300, 0.0, 0.3)])
def test_mcnemar_power_matches_simulation(n, difference, discordant):
    exact = mcnemar_power(n, difference, discordant)
    simulated = _simulated_power(n, difference, discordant, trials=4000, seed=n)
    assert exact == pytest.approx(simulated, abs=3 * math.sqrt(0.25 / 4000) + 1e-3)
    if difference == 0:
        assert exact <= 0.05  # the exact test never exceeds its level


def test_mcnemar_power_approaches_connor_1987_for_large_n():
    # Connor (1987), Biometrics 43:207-211: power ≈ Φ((δ√n − z_{α/2}√ψ) / √(ψ − δ²)).
    n, difference, discordant = 2000, 0.03, 0.2
    z = scipy_stats.norm.ppf(0.975)
    approximate = scipy_stats.norm.cdf(
        (difference * math.sqrt(n) - z * math.sqrt(discordant)) / math.sqrt(discordant - difference**2)
    )
    assert mcnemar_power(n, difference, discordant) == pytest.approx(approximate, abs=0.03)


def test_minimum_detectable_difference_is_where_power_crosses():
    detectable = minimum_detectable_difference(500, 0.1, power=0.8)
    assert mcnemar_power(500, detectable, 0.1) >= 0.8 > mcnemar_power(500, detectable - 0.002, 0.1)
    assert minimum_detectable_difference(5, 0.1) is None  # five images can never reach 80 %
    assert "detectable with power 80%" in describe_power(500, 0.1)


def test_format_interval():
    assert format_interval(45.3, 44.4, 46.2) == "45.3 ±0.9"
    assert format_interval(45.3, 44.0, 46.0, style="bracket") == "45.3 [44.0, 46.0]"
    with pytest.raises(ValueError, match="style='x' is invalid"):
        format_interval(1, 0, 2, style="x")


def test_holm_adjustment_matches_the_step_down_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, then 0.04·1 = 0.04
    # is raised to the running maximum 0.06 (Holm 1979; adjusted p-values as in Wright 1992, Biometrics 48:1005)
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == [1.0, 1.0] and holm_adjusted([]) == []
