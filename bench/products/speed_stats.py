"""What a ``bench speed`` ratio may claim: paired ratios over alternating repeats with an interval,
when a measurement is too scattered to trust, each path's precision, its FLOPs and its share of the
device's peak (MFU).

Why paired ratios: the paths of one method are timed in rounds (reference, fast, …, then the reverse
order), so the load of a shared machine in one round hits every path of that round alike; the ratio
of one round cancels it where the ratio of two medians would not. The interval is the distribution-free
confidence interval of the median of those ratios from order statistics (min–max up to 7 repeats; its
exact coverage is printed), so it needs no assumption about how the load is distributed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

SCATTER_LIMIT = 1.5  # interval high / low above this: "unstable", and more repeats are taken (up to a cap)
CONFIDENCE = 0.90  # nominal coverage of the median's interval (its exact coverage is reported)

# Dense peak throughput (FLOP/s, no sparsity) by device-name fragment, first match wins: NVIDIA's data
# sheets (H100 SXM5 and H200 SXM: bf16 989.4 T, TF32 494.7 T, fp32 66.9 T; H100 PCIe: 756 T, 378 T, 51.2 T).
PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("H200", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
)


@dataclass(frozen=True)
class RatioSummary:
    """fast / reference over paired repeats: median, interval, its exact coverage, and the verdict."""

    median: float
    low: float
    high: float
    coverage: float  # exact coverage of [low, high] for the median; 0 with fewer than 2 repeats
    repeats: int

    @property
    def unstable(self) -> bool:
        return self.repeats >= 2 and self.high > SCATTER_LIMIT * self.low

    @property
    def verdict(self) -> str:
        if self.repeats < 2:
            return f"{self.repeats} repeat: no interval"
        return "unstable" if self.unstable else "stable"


def paired_ratios(fast: Sequence[float], reference: Sequence[float]) -> list[float]:
    """The ratio of each round's fast rate to the same round's reference rate (images/s)."""
    if len(fast) != len(reference):
        raise ValueError(f"{len(fast)} fast and {len(reference)} reference repeats are invalid: allowed equal counts")
    return [f / r for f, r in zip(fast, reference, strict=True) if r > 0]


def _binomial_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> RatioSummary:
    """The median and the order-statistic interval [x_(k), x_(n+1-k)] with the largest k whose exact
    coverage 1 - 2 P(B <= k - 1) is at least ``confidence`` (k = 1, min–max, when none is)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no repeats: allowed at least one")
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * _binomial_cdf(k, n) >= confidence:
        k += 1
    coverage = 1 - 2 * _binomial_cdf(k - 1, n) if n >= 2 else 0.0
    return RatioSummary(statistics.median(ordered), ordered[k - 1], ordered[n - k], coverage, n)


def summarise_ratio(fast: Sequence[float], reference: Sequence[float]) -> RatioSummary:
    return median_interval(paired_ratios(fast, reference))


def precision_class(amp: bool, tf32: bool, device: torch.device) -> str:
    """'bf16', 'tf32' or 'fp32': which peak a path's matrix products run at (CPU has only fp32 here)."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if amp else ("tf32" if tf32 else "fp32")


def precision_label(amp: bool, tf32: bool, device: torch.device) -> str:
    """The precision column of a row, in words that say what the arithmetic was."""
    if device.type != "cuda":
        return "fp32 (cpu: no TF32, no bf16 autocast)"
    if amp:
        return "bf16 autocast (model calls), fp32 losses/PGD steps, TF32 elsewhere" if tf32 else "bf16 autocast"
    return "fp32 with TF32 convs/matmuls" if tf32 else "strict fp32 (TF32 off)"


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's dense peak for ``precision`` ('bf16', 'tf32', 'fp32'), None when not tabled (CPU)."""
    for fragment, peaks in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return peaks[precision]
    return None


def mfu(images_per_s: float, flops_per_image: float | None, device_name: str, precision: str) -> float | None:
    """Achieved share of the device's peak: FLOPs counted on the real step × images/s ÷ peak."""
    peak = peak_flops(device_name, precision)
    if peak is None or flops_per_image is None:
        return None
    return images_per_s * flops_per_image / peak


class _FlopCounter(TorchDispatchMode):
    """Counts FLOPs with torch.utils.flop_counter's per-operator formulas (matrix products and
    convolutions, forward and backward) in a plain dispatch mode: ``FlopCounterMode`` also tracks
    modules with backward hooks, which ``torch.autograd.grad`` on an input (every PGD step) refuses."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(run_step) -> float:
    """FLOPs of one call of ``run_step``, counted by the FLOP counter's formulas on the real step
    rather than by hand."""
    counter = _FlopCounter()
    with counter:
        run_step()
    return float(counter.total)
