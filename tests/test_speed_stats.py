"""What a `bench speed` ratio may claim: the order-statistic interval of the median of paired
ratios and its exact coverage, 'unstable' beyond the scatter limit, more rounds (up to a cap) while
unstable, alternating order, FLOPs counted through ``torch.autograd.grad``, and MFU."""

from __future__ import annotations

import pytest
import torch

from bench.products import speed_measure
from bench.products.speed_measure import SpeedOptions, alternate, fast_reference_pairs
from bench.products.speed_stats import count_flops, median_interval, mfu, precision_label, summarise_ratio


def test_interval_is_min_max_for_few_repeats_and_narrows_with_more():
    three = median_interval([1.0, 3.0, 2.0])
    assert (three.median, three.low, three.high) == (2.0, 1.0, 3.0)
    assert three.coverage == pytest.approx(0.75)  # 1 - 2 / 2**3
    ten = median_interval([float(v) for v in range(1, 11)])
    assert (ten.low, ten.high) == (2.0, 9.0)  # k = 2: coverage 1 - 2 * 11/1024 >= 0.9
    assert ten.coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert median_interval([2.0]).verdict == "1 repeat: no interval"


def test_scatter_beyond_the_limit_is_unstable():
    assert summarise_ratio([10.0, 20.0, 11.0], [10.0, 10.0, 10.0]).verdict == "unstable"
    assert summarise_ratio([10.0, 12.0, 11.0], [10.0, 10.0, 10.0]).verdict == "stable"
    with pytest.raises(ValueError, match="allowed equal counts"):
        summarise_ratio([1.0], [1.0, 2.0])


def _scripted(monkeypatch, seconds: dict[str, list[float]]):
    """``timed`` returns the next scripted duration of the path it runs (and runs it)."""
    order = []

    def timed(run, device):
        run()
        return seconds[order[-1]].pop(0)

    monkeypatch.setattr(speed_measure, "timed", timed)
    return order


def test_unstable_ratios_take_more_rounds_up_to_the_cap_in_alternating_order(monkeypatch):
    seconds = {"reference": [1.0] * 8, "fast": [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]}
    order = _scripted(monkeypatch, seconds)

    def run_once(name):
        order.append(name)
        return 10

    results = alternate(["reference", "fast"], run_once, SpeedOptions(repeats=3, max_repeats=5), torch.device("cpu"))
    assert len(results["fast"][0]) == 5  # scattered: two more rounds, then the cap
    assert order[:6] == ["reference", "fast", "fast", "reference", "reference", "fast"]
    seconds = {"reference": [1.0] * 8, "fast": [0.8] * 8}
    order = _scripted(monkeypatch, seconds)
    results = alternate(["reference", "fast"], run_once, SpeedOptions(repeats=3, max_repeats=5), torch.device("cpu"))
    assert [len(results[name][0]) for name in ("reference", "fast")] == [3, 3]
    assert results["fast"][0] == [pytest.approx(12.5)] * 3


def test_pairs_are_every_fast_path_against_every_reference_path():
    names = ["reference", "reference-strict", "fast", "fast-bf16"]
    assert fast_reference_pairs(names) == [
        ("fast", "reference"),
        ("fast", "reference-strict"),
        ("fast-bf16", "reference"),
        ("fast-bf16", "reference-strict"),
    ]


def test_flops_are_counted_through_an_input_gradient():
    layer = torch.nn.Linear(16, 4, bias=False)
    x = torch.rand(8, 16, requires_grad=True)

    def step():
        (grad,) = torch.autograd.grad(layer(x).sum(), x)  # as every PGD step (FlopCounterMode refuses this)
        return grad

    assert count_flops(step) == 2 * (2 * 8 * 16 * 4)  # forward and the input's backward


def test_mfu_uses_the_peak_of_the_rows_precision_and_is_na_on_cpu():
    assert mfu(1000.0, 1e9, "NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(1e12 / 989.4e12)
    assert mfu(1000.0, 1e9, "NVIDIA H100 PCIe", "tf32") == pytest.approx(1e12 / 378e12)
    assert mfu(1000.0, 1e9, "NVIDIA H200", "fp32") == pytest.approx(1e12 / 66.9e12)
    assert mfu(1000.0, 1e9, "CPU", "fp32") is None
    assert precision_label(True, True, torch.device("cpu")) == "fp32 (cpu: no TF32, no bf16 autocast)"
    assert precision_label(False, False, torch.device("cuda")) == "strict fp32 (TF32 off)"
