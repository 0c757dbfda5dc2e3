"""Uncertainty on every accuracy and paired tests of "does the variant help?" (issue 13 §1).

Accuracies are in percent, differences in percentage points, always *variant − base*.

- One seed, one model: the number of correctly classified test images is binomial; its 95 %
  interval is Wilson's score interval (Wilson 1927; recommended over the Wald interval by
  Newcombe 1998, Stat. Med. 17:857-872, and Brown, Cai & DasGupta 2001).
- Several seeds: mean, sample standard deviation (ddof 1) and the Student-t interval of the mean
  (exact t quantile from scipy).
- Two classifiers on the same images (one seed): the paired 2×2 table of per-image correctness.
  Test: McNemar's exact conditional test (two-sided binomial test of the discordant pairs at 1/2,
  the doubled smaller tail, capped at 1), used at every count: it never exceeds α, at the price
  of being conservative when few pairs are discordant (Fagerland, Lydersen & Laake 2013, BMC Med.
  Res. Methodol. 13:91, who prefer the mid-p version; we keep the exact test so that a verdict
  "better"/"worse" is never the test's own optimism). Interval: Newcombe's square-and-add
  (method 10) interval for a difference of paired proportions (Newcombe 1998, Stat. Med.
  17:2635-2650), built from the two Wilson intervals with a correlation correction φ. Interval
  and test are different procedures and can disagree at the margin; the verdict uses the test.
- Several seeds, paired: a paired t-test over the per-seed accuracies, and a
  seeded hierarchical bootstrap over seeds and then images within a seed, which carries both
  seed-to-seed and image sampling noise into one interval (with 3 seeds it cannot estimate the
  seed variance well: it is reported, not used for the verdict). The report's and ``bench compare``'s
  method verdicts come from bench.products.method_level (random-effects HKSJ over seeds, per-image
  records nested); the McNemar test above answers only whether two trained classifiers differ.
- Many comparisons: Holm's step-down adjustment of their p-values (family-wise error at α).
- Planning: the exact power of the exact McNemar test for n images, a true difference δ and a
  discordance rate ψ (the share of images on which the two classifiers disagree), and the
  minimum detectable difference at a given power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval, all in the same unit (percent or points)."""

    estimate: float
    low: float
    high: float
    method: str

    @property
    def half_width(self) -> float:
        """The larger of the two half-widths (an asymmetric interval printed as ± stays conservative)."""
        return max(self.estimate - self.low, self.high - self.estimate)


@dataclass(frozen=True)
class SeedSummary:
    """Across seeds: mean, sample standard deviation and the t-interval of the mean (percent)."""

    n: int
    mean: float
    std: float  # nan for one seed
    low: float  # nan for one seed
    high: float


@dataclass(frozen=True)
class Comparison:
    """Variant − base: the difference with its interval, the test's p-value and the verdict."""

    n: int  # images (paired) or seeds (over seeds)
    base: float  # accuracy of the base, %
    variant: float  # accuracy of the variant, %
    difference: float  # points
    low: float
    high: float
    p_value: float
    test: str
    verdict: str
    discordant: float | None = None  # paired on images: the share ψ of images the two classify differently

    def detectable(self, power: float = 0.8, alpha: float = ALPHA) -> float | None:
        """Paired on images: the smallest difference (points) the exact McNemar test detects with ``power``
        at this n and the observed discordance (None: no discordant image, too few images, or over seeds)."""
        if not self.discordant:
            return None
        detectable = minimum_detectable_difference(self.n, self.discordant, power, alpha)
        return None if detectable is None else 100.0 * detectable


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is invalid: allowed values strictly between 0 and 1")


def _z(confidence: float) -> float:
    _check_confidence(confidence)
    return float(scipy_stats.norm.ppf(0.5 + confidence / 2))


def _wilson_fraction(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval for k successes in n trials, in percent (no continuity correction)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"k={k!r}, n={n!r} is invalid: allowed 0 <= k <= n, n >= 1")
    low, high = _wilson_fraction(k, n, _z(confidence))
    return Interval(100.0 * k / n, 100.0 * low, 100.0 * high, "wilson")


def seed_summary(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean ± sample std over seeds and the Student-t interval of the mean (df = seeds − 1)."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"values={values!r} is invalid: allowed a non-empty list of numbers")
    _check_confidence(confidence)
    mean = float(data.mean())
    if data.size == 1:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan)
    std = float(data.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * std / math.sqrt(data.size)
    return SeedSummary(int(data.size), mean, std, mean - half, mean + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the discordant counts b, c are Binomial(b + c, 1/2) under H0."""
    if b < 0 or c < 0:
        raise ValueError(f"b={b!r}, c={c!r} is invalid: allowed non-negative counts")
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * float(scipy_stats.binom.cdf(min(b, c), b + c, 0.5)))


def newcombe_paired_interval(
    both: int, first_only: int, second_only: int, neither: int, confidence: float = CONFIDENCE
) -> Interval:
    """Newcombe's method-10 interval for p_first − p_second from a paired 2×2 table, in points.

    ``first_only`` counts pairs where only the first classification succeeds. φ is Newcombe's
    correlation correction (0 when a margin is empty)."""
    counts = (both, first_only, second_only, neither)
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"table={counts!r} is invalid: allowed non-negative counts with a positive total")
    n = sum(counts)
    z = _z(confidence)
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = _wilson_fraction(both + first_only, n, z)
    l2, u2 = _wilson_fraction(both + second_only, n, z)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    cross = both * neither - first_only * second_only
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    difference = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    low, high = max(-1.0, difference - below), min(1.0, difference + above)
    return Interval(100.0 * difference, 100.0 * low, 100.0 * high, "newcombe-paired")


def verdict(difference: float, p_value: float, alpha: float = ALPHA) -> str:
    """'variant better' / 'variant worse' when the test rejects at α, else 'no detectable difference'."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} is invalid: allowed values strictly between 0 and 1")
    if p_value < alpha and difference > 0:
        return "variant better"
    if p_value < alpha and difference < 0:
        return "variant worse"
    return "no detectable difference"


def _as_bool(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype != np.bool_:
        raise ValueError(
            f"{name} of dtype {array.dtype} and shape {array.shape} is invalid: "
            "allowed a 1-D boolean array of per-image correctness"
        )
    return array


def compare_paired(base_correct, variant_correct, alpha: float = ALPHA, confidence: float = CONFIDENCE) -> Comparison:
    """Paired comparison on the same images (one seed): Newcombe interval + exact McNemar test."""
    base, variant = _as_bool("base_correct", base_correct), _as_bool("variant_correct", variant_correct)
    if base.shape != variant.shape or base.size == 0:
        raise ValueError(f"shapes {base.shape} and {variant.shape} are invalid: allowed equal, non-empty")
    both = int(np.sum(base & variant))
    variant_only = int(np.sum(variant & ~base))
    base_only = int(np.sum(base & ~variant))
    interval = newcombe_paired_interval(
        both, variant_only, base_only, base.size - both - variant_only - base_only, confidence
    )
    p_value = mcnemar_exact(variant_only, base_only)
    return Comparison(
        int(base.size),
        100.0 * float(base.mean()),
        100.0 * float(variant.mean()),
        interval.estimate,
        interval.low,
        interval.high,
        p_value,
        "mcnemar-exact",
        verdict(interval.estimate, p_value, alpha),
        (variant_only + base_only) / base.size,
    )


def paired_t(
    base_values: Sequence[float], variant_values: Sequence[float], alpha: float = ALPHA, confidence: float = CONFIDENCE
) -> Comparison:
    """Paired t-test over seeds on per-seed accuracies (seed i of the base paired with seed i of the variant)."""
    base, variant = np.asarray(base_values, dtype=np.float64), np.asarray(variant_values, dtype=np.float64)
    if base.shape != variant.shape or base.ndim != 1 or base.size < 2:
        raise ValueError(
            f"{base.size} base and {variant.size} variant seeds are invalid: "
            "allowed two equal-length lists of at least 2 seeds"
        )
    _check_confidence(confidence)
    differences = variant - base
    mean, df = float(differences.mean()), differences.size - 1
    standard_error = float(differences.std(ddof=1)) / math.sqrt(differences.size)
    if standard_error == 0.0:  # identical differences: t is ±∞ (or 0/0 when all are zero)
        p_value = 1.0 if mean == 0.0 else 0.0
        low = high = mean
    else:
        statistic = mean / standard_error
        p_value = float(2 * scipy_stats.t.sf(abs(statistic), df))
        half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * standard_error
        low, high = mean - half, mean + half
    return Comparison(
        int(base.size),
        float(base.mean()),
        float(variant.mean()),
        mean,
        low,
        high,
        p_value,
        "paired-t-over-seeds",
        verdict(mean, p_value, alpha),
    )


def hierarchical_bootstrap(
    base_correct: Sequence, variant_correct: Sequence, n_boot: int = 4000, seed: int = 0, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile interval of the mean paired difference, resampling seeds, then images within each seed.

    ``base_correct[s]`` and ``variant_correct[s]`` are the per-image correctness of seed s on the
    same images. Resampling the images of one seed with replacement only changes the counts of
    the three per-image differences (+1, 0, −1), so each inner resample is drawn exactly as one
    multinomial, which makes the bootstrap cheap for 10,000 images."""
    if len(base_correct) != len(variant_correct) or len(base_correct) == 0:
        raise ValueError(
            f"{len(base_correct)} base and {len(variant_correct)} variant seeds are invalid: "
            "allowed equal, non-zero numbers of seeds"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} is invalid: allowed >= 1")
    _check_confidence(confidence)
    sizes, probabilities, means = [], [], []
    for index, (base_s, variant_s) in enumerate(zip(base_correct, variant_correct)):
        base_s, variant_s = _as_bool(f"base_correct[{index}]", base_s), _as_bool(f"variant_correct[{index}]", variant_s)
        if base_s.shape != variant_s.shape or base_s.size == 0:
            raise ValueError(f"seed {index}: shapes {base_s.shape} and {variant_s.shape} are invalid: allowed equal")
        better, worse = int(np.sum(variant_s & ~base_s)), int(np.sum(base_s & ~variant_s))
        sizes.append(base_s.size)
        probabilities.append([better / base_s.size, worse / base_s.size, 1 - (better + worse) / base_s.size])
        means.append((better - worse) / base_s.size)
    generator = np.random.default_rng(seed)
    n_seeds = len(sizes)
    chosen = generator.integers(0, n_seeds, size=(n_boot, n_seeds))
    sizes_array, probabilities_array = np.asarray(sizes), np.clip(np.asarray(probabilities), 0.0, 1.0)
    counts = generator.multinomial(sizes_array[chosen], probabilities_array[chosen])  # [n_boot, n_seeds, 3]
    replicates = ((counts[..., 0] - counts[..., 1]) / sizes_array[chosen]).mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(
        100.0 * float(np.mean(means)),
        100.0 * float(low),
        100.0 * float(high),
        f"hierarchical-bootstrap(seeds, images; {n_boot} resamples, seed {seed})",
    )


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: the i-th smallest p times
    (m − i + 1), made monotone and capped at 1. Rejecting where the adjusted p < α keeps the chance of
    any false 'better'/'worse' among all m comparisons at α (family-wise), under any dependence."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def mcnemar_power(n: int, difference: float, discordant: float, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided exact McNemar test at level α for n paired images.

    ``difference`` = δ = P(only variant correct) − P(only base correct) and ``discordant`` = ψ = their
    sum, both as fractions. The number of discordant images is Binomial(n, ψ); given m of them, the
    variant-only count is Binomial(m, (ψ + δ)/(2ψ)) and the test rejects when it falls in the
    exact test's two tails."""
    if n < 1:
        raise ValueError(f"n={n!r} is invalid: allowed >= 1")
    if not 0 < discordant <= 1 or abs(difference) > discordant:
        raise ValueError(
            f"difference={difference!r}, discordant={discordant!r} is invalid: "
            "allowed 0 < discordant <= 1 and |difference| <= discordant"
        )
    spread = 8.0 * math.sqrt(n * discordant * (1 - discordant)) + 8.0  # the pmf of m is below 1e-14 outside
    m = np.arange(max(0, int(n * discordant - spread)), min(n, int(n * discordant + spread)) + 1)
    tail = scipy_stats.binom.ppf(alpha / 2, m, 0.5)
    tail = np.where(scipy_stats.binom.cdf(tail, m, 0.5) <= alpha / 2, tail, tail - 1)  # largest k in the lower tail
    share = (discordant + difference) / (2 * discordant)
    given_m = scipy_stats.binom.cdf(tail, m, share) + scipy_stats.binom.sf(m - tail - 1, m, share)
    given_m = np.where(tail >= 0, given_m, 0.0)
    return float(np.sum(scipy_stats.binom.pmf(m, n, discordant) * given_m))


def minimum_detectable_difference(n: int, discordant: float, power: float = 0.8, alpha: float = ALPHA) -> float | None:
    """Smallest δ (fraction) the exact McNemar test detects with at least ``power``; None if even δ = ψ cannot."""
    if not 0 < power < 1:
        raise ValueError(f"power={power!r} is invalid: allowed values strictly between 0 and 1")
    if mcnemar_power(n, discordant, discordant, alpha) < power:
        return None
    low, high = 0.0, discordant
    for _ in range(40):  # bisection to ~1e-12 of ψ
        middle = (low + high) / 2
        low, high = (low, middle) if mcnemar_power(n, middle, discordant, alpha) >= power else (middle, high)
    return high


def describe_power(n: int, discordant: float, power: float = 0.8, alpha: float = ALPHA) -> str:
    """One sentence for a report: what difference n paired images can detect."""
    detectable = minimum_detectable_difference(n, discordant, power, alpha)
    if detectable is None:
        return (
            f"with {n} images and {100 * discordant:.0f} % discordant predictions, no difference is detectable "
            f"with power {power:.0%} (exact McNemar, α = {alpha})"
        )
    return (
        f"with {n} images and {100 * discordant:.0f} % discordant predictions, a difference of "
        f"{100 * detectable:.1f} points is detectable with power {power:.0%} (exact McNemar, α = {alpha})"
    )


def format_interval(estimate: float, low: float, high: float, digits: int = 1, style: str = "pm") -> str:
    """'45.3 ±0.9' (the larger half-width) or '45.3 [44.4, 46.1]'; a nan interval prints the estimate alone."""
    if style not in ("pm", "bracket"):
        raise ValueError(f"style={style!r} is invalid: allowed ['bracket', 'pm']")
    if math.isnan(low) or math.isnan(high):
        return f"{estimate:.{digits}f}"
    if style == "pm":
        return f"{estimate:.{digits}f} ±{max(estimate - low, high - estimate):.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
