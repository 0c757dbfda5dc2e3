"""The stopping rule of ``bench study`` (bench.products.sequential), by simulation.

Each simulated study is one comparison with a realistic spread: every seed of each arm has its own
true accuracy (between-seed sd 4 points, as the digits runs of issue 20 show), measured on 359 test
images (binomial noise). Each look's interval is the paired t-interval over seeds, a calibrated
method-level test. Seeded and small: a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.errors import ConfigError
from bench.products import sequential
from bench.products.sequential import BETTER, EQUIVALENT, UNDECIDED, WORSE, Design, make_design
from bench.products.stats import paired_t

IMAGES, SEED_SD, CENTRE = 359, 4.0, 40.0
TOTAL_SD = math.hypot(math.sqrt(2) * SEED_SD, 100 * math.sqrt(2 * 0.24 / IMAGES))  # sd of one seed's difference
STUDIES = 2000


class _Comparison:
    def __init__(self, difference: float, low: float, high: float, sd: float):
        self.difference, self.low, self.high, self.p_value, self.between_seed_sd = difference, low, high, 0.5, sd


def _t_intervals(differences: np.ndarray, alpha: float) -> list[_Comparison]:
    """The paired t-interval over seeds (confidence 1 − alpha) of every study at once: the per-look test
    of ``bench.products.stats.paired_t``, vectorised over studies (checked against it below)."""
    k = differences.shape[1]
    mean, sd = differences.mean(axis=1), differences.std(axis=1, ddof=1)
    half = scipy_stats.t.ppf(1 - alpha / 2, k - 1) * sd / math.sqrt(k)
    return [_Comparison(*values) for values in zip(mean, mean - half, mean + half, sd)]


def _simulate(design: Design, effect: float, seed: int = 0) -> list[str]:
    """The final decision of ``STUDIES`` simulated studies with a true difference of ``effect`` points."""
    rng = np.random.default_rng(seed)
    shape = (STUDIES, design.max_seeds)
    truth = [np.clip(rng.normal(CENTRE + shift, SEED_SD, shape), 1, 99) / 100 for shift in (0.0, effect)]
    base, variant = (100 * rng.binomial(IMAGES, p) / IMAGES for p in truth)
    looks = {
        (k, alpha): _t_intervals(variant[:, :k] - base[:, :k], alpha) for k, alpha in zip(design.looks, design.alphas)
    }
    return [
        sequential.run(design, lambda k, alpha: looks[k, alpha][study])[-1].decision  # noqa: B023
        for study in range(STUDIES)
    ]


def test_the_vectorised_interval_is_paired_t():
    rng = np.random.default_rng(0)
    base, variant = rng.normal(40, 4, 5), rng.normal(42, 4, 5)
    ours = _t_intervals((variant - base)[None, :], 0.01)[0]
    theirs = paired_t(base, variant, alpha=0.01, confidence=0.99)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high))


def _rate(decisions: list[str], *wanted: str) -> float:
    return sum(decision in wanted for decision in decisions) / len(decisions)


def _mc_margin(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / STUDIES)


def test_spending_sums_to_alpha_and_keeps_early_looks_strict():
    design = make_design(max_seeds=10, first=3, step=2, alpha=0.05)
    assert design.looks == (3, 5, 7, 10)
    assert sum(design.alphas) == pytest.approx(0.05, abs=1e-12)
    assert list(design.alphas) == sorted(design.alphas)  # O'Brien-Fleming: most α left to the end
    assert design.alphas[0] < 0.001
    assert make_design(max_seeds=3, first=3).looks == (3,)
    assert make_design(max_seeds=3, first=3).alphas == pytest.approx((0.05,))
    assert sequential.schedule(3, 1, 6) == (3, 4, 5, 6)


def test_false_positive_rate_under_the_null_is_at_most_alpha():
    """Both arms from one distribution: the study says better/worse in ≤ α of studies (within MC error)."""
    design = make_design(max_seeds=10, first=3, step=2, alpha=0.05)
    rate = _rate(_simulate(design, effect=0.0, seed=1), BETTER, WORSE)
    assert rate <= 0.05 + _mc_margin(0.05)


def test_the_simulation_catches_a_rule_that_tests_every_look_at_full_alpha():
    """The planted bug (no spending: every look at α) inflates the false-positive rate past α, so the
    null test above can fail."""
    design = make_design(max_seeds=10, first=3, step=2, alpha=0.05)
    naive = Design(design.looks, (0.05,) * len(design.looks), 0.05, design.difference)
    assert _rate(_simulate(naive, effect=0.0, seed=1), BETTER, WORSE) > 0.05 + _mc_margin(0.05)


def test_power_on_a_planted_effect_meets_the_promise():
    """A true +10 points: the design promises ≥ 0.92 (``promised_power``); the simulated rate meets it."""
    design = make_design(max_seeds=10, first=3, step=2, alpha=0.05)
    promised = sequential.promised_power(design, 10.0, TOTAL_SD)
    assert promised == pytest.approx(0.92, abs=0.01)
    decisions = _simulate(design, effect=10.0, seed=2)
    assert _rate(decisions, BETTER) >= promised - _mc_margin(promised)
    assert _rate(decisions, WORSE) == 0.0


def test_a_tiny_true_difference_stops_as_no_difference_that_matters():
    """With a spread small enough, a true 0 is decided inside ±3 points before the budget is spent."""
    design = make_design(max_seeds=10, first=3, step=2, alpha=0.05, difference=3.0)
    looks = sequential.run(design, lambda k, alpha: _Fixed(0.2, -1.0, 1.4))
    assert [look.decision for look in looks] == [EQUIVALENT]


class _Fixed:
    def __init__(self, difference: float, low: float, high: float):
        self.difference, self.low, self.high, self.p_value, self.between_seed_sd = difference, low, high, 0.5, 1.0


@pytest.mark.parametrize(
    ("low", "high", "last", "expected"),
    [
        (0.5, 9.0, False, BETTER),
        (-9.0, -0.1, False, WORSE),
        (-2.0, 2.9, False, EQUIVALENT),
        (-2.0, 3.1, False, None),
        (-2.0, 3.1, True, UNDECIDED),
        (float("nan"), float("nan"), False, None),
        (float("nan"), float("nan"), True, UNDECIDED),
    ],
)
def test_decide(low, high, last, expected):
    assert sequential.decide(low, high, 3.0, last) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first": 1}, "--first-seeds=1 is invalid"),
        ({"max_seeds": 2}, "--max-seeds=2 is invalid"),
        ({"step": 0}, "--seeds-per-look=0 is invalid"),
        ({"alpha": 1.5}, "--alpha=1.5 is invalid"),
        ({"difference": 0.0}, "--difference=0.0 is invalid"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_design(**kwargs)
